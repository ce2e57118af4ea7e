"""Shared machinery of the benchmark run: context, subprocesses of the system under test, stats, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from qlara_events.config import Settings, Topics
from qlara_events.kafka import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
LOCAL_BIN = ROOT / ".local" / "bin"
RESULTS_DIR = ROOT / "benchmarks" / "results"

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:55432/postgres"
#: ``BENCH_DATABASE`` runs the bench on a database of its own (a smoke run beside someone else's bench).
DATABASE = os.environ.get("BENCH_DATABASE", "qlara_bench")
KAFKA = "127.0.0.1:9092"
#: Ports of servers the bench starts (loopback only), one per purpose so nothing collides within a run.
PORTS = {
    "ingress": 18080, "baseline_http": 18081, "projector": 18082, "dispatcher": 18083, "api": 18084,
    "baseline_status": 18085, "receiver": 18090,
}
INGEST_SECRET = "whsec_YmVuY2gtaW5nZXN0LXNlY3JldC1xbGFyYS1ldmVudHMtMDE="
TWILIO_TOKEN = "bench-twilio-auth-token"
WHATSAPP_SECRET = "bench-whatsapp-app-secret"


def progress(msg: str) -> None:
    """One progress line per step, on stderr so stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Context:
    """Everything a scenario needs to know about the run."""

    run_id: str
    quick: bool
    profile: bool
    #: CPU the load generator is pinned to (None: not pinned).
    generator_cpu: int | None
    workdir: Path
    database_url: str = f"postgresql://postgres@127.0.0.1:55432/{DATABASE}"
    spawned: list[int] = dataclasses.field(default_factory=list)

    def prefix(self, scenario: str) -> str:
        """The Kafka topic prefix of a scenario: ``bench.<run-id>.<scenario>.``."""
        return f"bench.{self.run_id}.{scenario}."

    def env(self, scenario: str, **extra: str) -> dict[str, str]:
        """Environment of a service subprocess for ``scenario``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("QLARA_")}
        env.update({
            "QLARA_KAFKA_BOOTSTRAP": KAFKA,
            "QLARA_KAFKA_TOPIC_PREFIX": self.prefix(scenario),
            "QLARA_DATABASE_URL": self.database_url,
            "QLARA_PROJECTOR_GROUP": f"bench-{self.run_id}-{scenario}-projector",
            "QLARA_DISPATCHER_GROUP": f"bench-{self.run_id}-{scenario}-dispatcher",
            "QLARA_LOG_LEVEL": "warning",
            "QLARA_INGEST_SECRET": INGEST_SECRET,
            "QLARA_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            "QLARA_WHATSAPP_APP_SECRET": WHATSAPP_SECRET,
            "QLARA_WHATSAPP_VERIFY_TOKEN": "bench-verify",
            "QLARA_URL_SIGNING_KEY": "bench-url-signing-key",
            "QLARA_WEBHOOK_REQUIRE_HTTPS": "false",
            "QLARA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            "QLARA_WEBHOOK_ALLOWED_PORTS": "1024-65535",  # the loopback receivers' ephemeral ports
            # BENCH_UVLOOP=true|false runs every role on that loop (A/B runs); unset: the service's default.
            **({"QLARA_UVLOOP": os.environ["BENCH_UVLOOP"]} if os.environ.get("BENCH_UVLOOP") else {}),
            # BENCH_QLARA_X=v sets QLARA_X=v in every service (A/B runs of one setting).
            **{k[len("BENCH_"):]: v for k, v in os.environ.items() if k.startswith("BENCH_QLARA_")},
        })
        env.update(extra)
        return env


# ------------------------------------------------------------------------------------------------ database


async def reset_database(ctx: Context, scenario: str) -> None:
    """Create ``qlara_bench`` if missing, empty its schema, then migrate it and create the scenario's topics."""
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        if not await admin.fetchval("select 1 from pg_database where datname = $1", DATABASE):
            await admin.execute(f"create database {DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(ctx.database_url)
    try:
        await conn.execute("drop schema public cascade; create schema public")
    finally:
        await conn.close()
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "qlara-events"), "migrate", "--topics", env=ctx.env(scenario),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        raise RuntimeError(f"migrate failed: {out.decode()[-2000:]}")


# ----------------------------------------------------------------------------------------------- services


@dataclasses.dataclass
class Service:
    """A server subprocess (a qlara-events role or the bare aiohttp baseline)."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def pid(self) -> int:
        """Process id (for py-spy)."""
        return self.proc.pid

    @property
    def base(self) -> str:
        """Its base URL (loopback)."""
        return f"http://127.0.0.1:{self.port}"


def vmhwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


async def wait_ready(port: int, proc: asyncio.subprocess.Process, path: str, within_s: float = 90.0) -> None:
    """Poll ``path`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.25)
    raise RuntimeError(f"process on port {port} not ready after {within_s} s")


@contextlib.asynccontextmanager
async def service(ctx: Context, name: str, argv: Sequence[str], env: Mapping[str, str], port: int,
                  ready_path: str = "/readyz") -> AsyncIterator[Service]:
    """Start a server subprocess, wait until it is ready, stop it (SIGTERM, then SIGKILL) afterwards."""
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            # Its readiness would be someone else's, and the load would go to them.
            raise RuntimeError(f"{name}: port {port} is already in use by another process")
    log = ctx.workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=dict(env), stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                    cwd=ROOT)
    ctx.spawned.append(proc.pid)
    try:
        try:
            await wait_ready(port, proc, ready_path)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{name}: {exc}: {' / '.join(tail)}") from None
        yield Service(name, proc, port, log)
    finally:
        await stop_process(proc)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 30.0) -> None:
    """SIGTERM, wait for a graceful stop, SIGKILL if it does not come."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def role(ctx: Context, scenario: str, role_name: str, **extra_env: str) -> AsyncIterator[Service]:
    """``qlara-events serve --role <role>`` for ``scenario`` on its port."""
    port = PORTS[role_name]
    await ensure_topics(Settings(kafka_bootstrap=KAFKA, topics=Topics(ctx.prefix(scenario))))
    env = ctx.env(scenario, QLARA_HTTP_PORT=str(port), QLARA_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", **extra_env)
    argv = [str(BIN / "qlara-events"), "serve", "--role", role_name]
    async with service(ctx, f"{scenario}-{role_name}", argv, env, port) as svc:
        yield svc


@contextlib.asynccontextmanager
async def make_run(ctx: Context, scenario: str, base_port: int) -> AsyncIterator[dict[str, list[int]]]:
    """``serve --role all --processes`` (what ``make run`` starts) for ``scenario``; once every child is ready,
    yields their pids by role (and the supervisor's), for a CpuMeter."""
    await ensure_topics(Settings(kafka_bootstrap=KAFKA, topics=Topics(ctx.prefix(scenario))))
    env = ctx.env(scenario, QLARA_HTTP_PORT=str(base_port), QLARA_PUBLIC_BASE_URL=f"http://127.0.0.1:{base_port}")
    argv = [str(BIN / "qlara-events"), "serve", "--role", "all", "--processes"]
    async with service(ctx, f"{scenario}-make-run", argv, env, base_port) as sup:
        for port in (base_port + 1, base_port + 2):
            await wait_ready(port, sup.proc, "/readyz")
        procs: dict[str, list[int]] = {"supervisor": [sup.pid]}
        for p in _read(f"/proc/{sup.pid}/task/{sup.pid}/children").split():
            args = _read(f"/proc/{p}/cmdline").split("\0")
            name = args[args.index("--role") + 1] if "--role" in args else f"child-{p}"
            procs[name] = [int(p)]
        yield procs


# ------------------------------------------------------------------------------------------------ stats


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values, nearest-rank; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """p50/p99/p99.9/max in milliseconds of latencies given in seconds."""
    s = sorted(values_s)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {"p50_ms": ms(percentile(s, 0.5)), "p99_ms": ms(percentile(s, 0.99)),
            "p999_ms": ms(percentile(s, 0.999)), "max_ms": ms(s[-1] if s else None)}


# --------------------------------------------------------------------------------------- machine and load


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else platform's)."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gb() -> float | None:
    """Total memory in GiB."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def kafka_version() -> str:
    """The broker version, from the jar the local infrastructure runs (deploy/local/kafka.sh)."""
    libs = ROOT / ".local" / "kafka" / "libs"
    for jar in sorted(libs.glob("kafka_2.*-*.jar")):
        name = jar.stem
        if name.count("-") == 1:
            return name.split("-", 1)[1]
    return "unknown"


async def postgres_version(url: str) -> str:
    """``server_version`` of the database."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("show server_version"))
    finally:
        await conn.close()


def _reaped_children_cpu() -> float:
    """CPU seconds of this process's children that already exited (cutime + cstime)."""
    raw = _read(f"/proc/{os.getpid()}/stat")
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _proc_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process: pid -> (command, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        raw = _read(f"/proc/{d.name}/stat")
        if not raw:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(d.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _ancestry(pid: int) -> Iterator[int]:
    seen = 0
    while pid > 1 and seen < 64:
        yield pid
        raw = _read(f"/proc/{pid}/stat")
        if not raw:
            return
        pid = int(raw[raw.rindex(")") + 2:].split()[1])
        seen += 1


class CpuWatch:
    """CPU seconds other processes used while a scenario ran (who else shared the machine)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._before: dict[int, tuple[str, float]] = {}
        self._reaped = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        """Snapshot now."""
        self._before = _proc_cpu()
        self._reaped = _reaped_children_cpu()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """Top consumers since :meth:`start`, split into the bench's own tree and everything else."""
        after = _proc_cpu()
        wall = max(time.monotonic() - self._t0, 1e-6)
        me = os.getpid()
        ours: dict[str, float] = {}
        others: dict[str, float] = {}
        for pid, (comm, cpu) in after.items():
            used = cpu - self._before.get(pid, (comm, 0.0))[1]
            if used < 0.05:
                continue
            mine = pid in self._ctx.spawned or me in _ancestry(pid)
            bucket = ours if mine else others
            bucket[comm] = bucket.get(comm, 0.0) + used
        top = sorted(others.items(), key=lambda kv: -kv[1])[:8]
        return {
            "wall_s": round(wall, 1),
            "bench_cpu_s": round(sum(ours.values()) + _reaped_children_cpu() - self._reaped, 1),
            "others_cpu_s": {k: round(v, 1) for k, v in top},
            "loadavg_1m": float(_read("/proc/loadavg").split()[0] or 0),
        }


def machine(postgres: str, generator_cpu: int | None) -> dict[str, Any]:
    """The ``machine`` object of the results (``what_else_ran`` is filled in per scenario by the runner)."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "postgres": postgres,
        "os": platform.platform(),
        "hostname": platform.node(),
        "load_generator": {
            "tool": "vegeta v12.12.0 (open loop, latency from each request's scheduled time)",
            "pinned_cpu": generator_cpu,
        },
        "what_else_ran": {},
    }


# ------------------------------------------------------------------------------------ CPU per event


async def wal_position(url: str) -> int:
    """The cluster's current WAL position in bytes (``pg_current_wal_lsn``): the difference of two readings is
    what PostgreSQL wrote to its WAL in between, for every database of the cluster (issue #16 item 4)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("select pg_current_wal_lsn() - '0/0'::pg_lsn"))
    finally:
        await conn.close()


def with_wal(cpu: dict[str, Any], before: int, after: int) -> dict[str, Any]:
    """``cpu`` (a :meth:`CpuMeter.stop` result) with the WAL bytes written per event between two readings."""
    return {**cpu, "wal_bytes_per_event": round((after - before) / max(int(cpu.get("events") or 0), 1))}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far; 0 once it is gone."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(comm: str, cmdline_has: str = "") -> list[int]:
    """Live processes whose command is ``comm`` (and whose command line contains ``cmdline_has``)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        raw = _read(f"/proc/{d.name}/stat")
        if not raw or raw[raw.index("(") + 1: raw.rindex(")")] != comm:
            continue
        if cmdline_has and cmdline_has not in _read(f"/proc/{d.name}/cmdline").replace("\0", " "):
            continue
        out.append(int(d.name))
    return out


def shared_infra(database: str = DATABASE) -> dict[str, list[int]]:
    """The shared PostgreSQL's processes that serve this bench (its background processes and the backends
    connected to ``database`` now: open a scenario's pools before the meter starts) and the Kafka broker on
    9092 (not other brokers, such as a failure test's cluster, that may run beside it)."""
    pg = []
    for pid in pids_named("postgres"):
        args = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
        if not args.startswith("postgres: postgres ") or f" {database} " in args:
            pg.append(pid)
    return {"postgres": pg, "kafka": pids_named("java", "kafka/single/server.properties")}


class CpuMeter:
    """CPU milliseconds per 1,000 events for each process of a scenario, read from /proc while they run.

    This figure survives a noisy machine (another process's load changes wall time, not the CPU a process
    spends per event) and feeds docs/scaling.md. ``bound_events_per_s`` is what the sum implies for the
    whole pipeline on this machine's cores, were nothing else running.
    """

    def __init__(self, processes: Mapping[str, Sequence[int]], *, children_as: str | None = None) -> None:
        self._pids = {name: list(pids) for name, pids in processes.items()}
        self._before: dict[str, float] = {}
        #: Also count this process's children that exit meanwhile (vegeta attacks) under this name.
        self._children_as = children_as

    def _now(self) -> dict[str, float]:
        now = {name: sum(process_cpu_s(p) for p in pids) for name, pids in self._pids.items()}
        if self._children_as:
            now[self._children_as] = now.get(self._children_as, 0.0) + _reaped_children_cpu()
        return now

    def start(self) -> None:
        """Snapshot now."""
        self._before = self._now()

    def add(self, name: str, pids: Sequence[int], *, whole_life: bool = False) -> None:
        """Measure more processes from now on (one started after :meth:`start`); ``whole_life``: count all the
        CPU they used since they started (processes that began after :meth:`start`, found afterwards)."""
        self._pids[name] = list(pids)
        self._before[name] = 0.0 if whole_life else sum(process_cpu_s(p) for p in pids)

    def stop(self, events: int) -> dict[str, Any]:
        """CPU-ms per 1,000 events of each process since :meth:`start` (call before the processes exit)."""
        after = self._now()
        per_1k = {name: round((after[name] - self._before[name]) * 1000 / max(events, 1) * 1000, 1)
                  for name in after}
        total = sum(per_1k.values())
        return {"events": events, "cpu_ms_per_1k": per_1k, "sum_ms_per_1k": round(total, 1),
                "bound_events_per_s": round((os.cpu_count() or 1) * 1e6 / total) if total else None}
