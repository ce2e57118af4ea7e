"""Short, bounded A/B probes of one ``serve --role ingress`` process, with a Python load generator.

``loops``     the ingress on uvloop and on the standard asyncio loop, alternately, same machine, same load:
              a fixed rate (open loop, latency from each request's scheduled time) and a closed loop of
              ``--concurrency`` workers (requests/s); CPU seconds of the ingress process per 1,000 requests
              from ``/proc/<pid>/stat``.
``overload``  a low rate, then a burst far past ``QLARA_INGEST_MAX_IN_FLIGHT`` beside it: latency of the low
              rate in windows after the burst stops sending, what the burst got and when its last answer came.

For when vegeta (``make bench-tools``) is not at hand; the requests are the bench's own (``benchmarks/events.py``:
signed canonical ``message.submitted`` events, one per request). Every phase is capped in requests and
seconds, loopback only. The generator (itself on uvloop in every probe) is pinned to the last CPU, the ingress
to all of them (``taskset``).

Run: ``PYTHONPATH=src python -m benchmarks.ingress_probe loops`` (or ``overload``); prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from benchmarks import events
from benchmarks.common import KAFKA, PORTS, Context, CpuWatch, Service, service, summarize_ms
from benchmarks.loadgen import Target
from qlara_events.config import Settings, Topics
from qlara_events.kafka import delete_topics, ensure_topics

ACCOUNT = "acct-bench-probe"
#: Hard caps on every phase, whatever the arguments say.
MAX_REQUESTS_PER_PHASE = 40_000
MAX_PHASE_S = 30.0
REQUEST_TIMEOUT_S = 10.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds (``/proc/<pid>/stat`` fields 14 and 15)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def targets(base: str, n: int) -> list[Target]:
    """``n`` freshly signed single-event requests."""
    stream = events.canonical_single(base, ACCOUNT)
    return [next(stream) for _ in range(min(n, MAX_REQUESTS_PER_PHASE))]


async def _send(http: aiohttp.ClientSession, t: Target) -> int:
    try:
        async with http.post(t.url, data=t.body, headers=t.headers) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def open_loop(http: aiohttp.ClientSession, base: str, rate: int,
                    seconds: float) -> list[tuple[float, float, int]]:
    """Send at ``rate``/s for ``seconds``: (scheduled time on ``perf_counter``, latency from it s, status) each."""
    seconds = min(seconds, MAX_PHASE_S)
    batch = targets(base, int(rate * seconds))
    out: list[tuple[float, float, int]] = []
    began = time.perf_counter()

    async def one(i: int, t: Target) -> None:
        at = began + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        status = await _send(http, t)
        out.append((at, time.perf_counter() - at, status))

    await asyncio.gather(*(one(i, t) for i, t in enumerate(batch)))
    return out


async def closed_loop(http: aiohttp.ClientSession, base: str, workers: int, seconds: float) -> tuple[int, int, float]:
    """``workers`` back-to-back senders for ``seconds``: (2xx, others, elapsed s)."""
    seconds = min(seconds, MAX_PHASE_S)
    pool = targets(base, MAX_REQUESTS_PER_PHASE)
    ok = bad = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        nonlocal ok, bad
        while time.perf_counter() < deadline and pool:
            status = await _send(http, pool.pop())
            if 200 <= status < 300:
                ok += 1
            else:
                bad += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return ok, bad, time.perf_counter() - began


def latency(rows: Sequence[tuple[float, float, int]]) -> dict[str, Any]:
    """p50/p99 from schedule and the count of non-2xx answers."""
    return {**summarize_ms([lat for _, lat, _ in rows]), "sent": len(rows),
            "non_2xx": sum(1 for *_, s in rows if not 200 <= s < 300)}


@contextlib.asynccontextmanager
async def ingress(ctx: Context, scenario: str, **env: str) -> AsyncIterator[Service]:
    """``serve --role ingress`` on all CPUs (the generator's pinning is not inherited)."""
    port = PORTS["ingress"]
    await ensure_topics(Settings(kafka_bootstrap=KAFKA, topics=Topics(ctx.prefix(scenario))))
    cpus = f"0-{(os.cpu_count() or 1) - 1}"
    argv = ["taskset", "-c", cpus, sys.executable, "-m", "qlara_events.cli", "serve", "--role", "ingress"]
    full = ctx.env(scenario, QLARA_HTTP_PORT=str(port), QLARA_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}", **env)
    async with service(ctx, f"{scenario}-ingress", argv, full, port) as svc:
        yield svc


async def probe_loop(ctx: Context, label: str, uvloop: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One ingress process: warm-up, fixed rate, closed loop."""
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with ingress(ctx, label, QLARA_UVLOOP="true" if uvloop else "false") as svc, \
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await open_loop(http, svc.base, min(args.rate, 500), 1.0)
        watch = CpuWatch(ctx)
        watch.start()
        cpu0 = cpu_seconds(svc.pid)
        fixed = await open_loop(http, svc.base, args.rate, args.fixed_s)
        cpu1 = cpu_seconds(svc.pid)
        ok, bad, elapsed = await closed_loop(http, svc.base, args.concurrency, args.max_s)
        cpu2 = cpu_seconds(svc.pid)
        machine = watch.stop()
    return {
        "loop": "uvloop" if uvloop else "asyncio",
        "fixed_rate": {"rate": args.rate, **latency(fixed),
                       "ingress_cpu_s_per_1000": round((cpu1 - cpu0) * 1000 / max(len(fixed), 1), 3)},
        "closed_loop": {"workers": args.concurrency, "ok": ok, "non_2xx": bad, "rps": round(ok / elapsed, 1),
                        "ingress_cpu_s_per_1000": round((cpu2 - cpu1) * 1000 / max(ok + bad, 1), 3)},
        "others_cpu_s": machine["others_cpu_s"], "loadavg_1m": machine["loadavg_1m"],
    }


async def cmd_loops(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate off/on ``--rounds`` times."""
    runs = []
    for r in range(args.rounds):
        for uv in (False, True):
            runs.append(await probe_loop(ctx, f"loops{r}{'uv' if uv else 'aio'}", uv, args))
            print(orjson.dumps(runs[-1]).decode(), file=sys.stderr, flush=True)
    return {"rounds": runs}


#: Windows (seconds relative to the end of the burst) the low rate's latency is reported in.
WINDOWS = ((-1.0, 0.0), (0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.5), (1.5, 2.0), (2.0, 3.0),
           (3.0, 4.0))


async def probe_overload(ctx: Context, max_in_flight: int, args: argparse.Namespace) -> dict[str, Any]:
    """Low rate alone; then the low rate with a burst of back-to-back senders beside it; the low rate again."""
    connector = aiohttp.TCPConnector(limit=args.burst_concurrency + 256)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    env = {"QLARA_INGEST_MAX_IN_FLIGHT": str(max_in_flight)}
    async with ingress(ctx, f"overload{max_in_flight}", **env) as svc, \
            aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        before = await open_loop(http, svc.base, args.low_rate, 3.0)
        pool = targets(svc.base, MAX_REQUESTS_PER_PHASE)
        low = asyncio.create_task(open_loop(http, svc.base, args.low_rate, 0.5 + args.burst_s + WINDOWS[-1][1]))
        await asyncio.sleep(0.5)  # the low rate's targets are signed before the burst starts
        stops = time.perf_counter() + args.burst_s  # the burst sends nothing new from here: the load drops
        burst = await _burst(http, pool, args.burst_concurrency, args.burst_s)
        last_answer_s = time.perf_counter() - stops
        rows = await low
    after = {f"{lo:+.2f}..{hi:+.2f}s": latency([r for r in rows if lo <= r[0] - stops < hi]) for lo, hi in WINDOWS}
    return {"max_in_flight": max_in_flight, "low_rate": args.low_rate, "before": latency(before),
            "burst": {"concurrency": args.burst_concurrency, "seconds": args.burst_s, "answers": burst,
                      "last_answer_after_stop_s": round(last_answer_s, 2)},
            "low_rate_by_window_after_burst_stops": after}


async def cmd_overload(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """The overload probe at each ``--max-in-flight``."""
    runs = []
    for cap in args.max_in_flight:
        runs.append(await probe_overload(ctx, cap, args))
        print(orjson.dumps(runs[-1]).decode(), file=sys.stderr, flush=True)
    return {"runs": runs}


async def _burst(http: aiohttp.ClientSession, pool: list[Target], workers: int, seconds: float) -> dict[str, int]:
    """``workers`` back-to-back senders for ``seconds``: answers by status (0: no answer)."""
    counts: dict[str, int] = {}
    deadline = time.perf_counter() + min(seconds, MAX_PHASE_S)

    async def worker() -> None:
        while time.perf_counter() < deadline and pool:
            status = await _send(http, pool.pop())
            counts[str(status)] = counts.get(str(status), 0) + 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return counts


def main(argv: Sequence[str]) -> None:
    """Parse, pin the generator, run one probe, print its JSON, delete its topics."""
    p = argparse.ArgumentParser(prog="benchmarks.ingress_probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("loops")
    lp.add_argument("--rounds", type=int, default=3)
    lp.add_argument("--rate", type=int, default=400)
    lp.add_argument("--fixed-s", type=float, default=8.0)
    lp.add_argument("--max-s", type=float, default=6.0)
    lp.add_argument("--concurrency", type=int, default=32)
    op = sub.add_parser("overload")
    op.add_argument("--max-in-flight", type=int, nargs="+", default=[1000, 1_000_000])
    op.add_argument("--low-rate", type=int, default=100)
    op.add_argument("--burst-concurrency", type=int, default=3000)
    op.add_argument("--burst-s", type=float, default=5.0)
    args = p.parse_args(argv)
    last = (os.cpu_count() or 1) - 1
    os.sched_setaffinity(0, {last})
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    ctx = Context(run_id=run_id, quick=True, profile=False, generator_cpu=last,
                  workdir=Path(tempfile.mkdtemp(prefix="qlara-probe-")))

    async def run() -> dict[str, Any]:
        try:
            return await (cmd_loops if args.cmd == "loops" else cmd_overload)(ctx, args)
        finally:
            await delete_topics(KAFKA, f"bench.{run_id}.")

    result = uvloop.run(run())  # the generator's loop is the same in every probe; uvloop leaves it more headroom
    print(orjson.dumps({"run_id": run_id, "probe": args.cmd, **result}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main(sys.argv[1:])
