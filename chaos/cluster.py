"""What the harness starts and breaks: the local Kafka cluster, PostgreSQL, and processes of the service.

The cluster and PostgreSQL are driven only through the project's scripts (deploy/local/cluster.sh,
deploy/local/postgres.sh), so `make chaos` exercises the same tooling a developer uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "deploy" / "local" / "cluster.sh"
POSTGRES_SH = ROOT / "deploy" / "local" / "postgres.sh"


class HarnessError(RuntimeError):
    """The harness could not set something up (not a finding about the service)."""


async def run_script(argv: Sequence[str], *, env: Mapping[str, str] | None = None, limit_s: float = 180.0) -> str:
    """Run a project script; return its stderr+stdout, raise with the tail of it when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HarnessError(f"{' '.join(argv)} did not finish within {limit_s:.0f} s") from None
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}):\n{text[-3000:]}")
    return text


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A three-node KRaft cluster run by deploy/local/cluster.sh (RF 3, min.insync.replicas=2)."""

    name: str = "chaos"
    base_port: int = 19192
    heap: str = "512m"

    def port(self, node: int) -> int:
        """Broker port of node 1..3."""
        return self.base_port + 2 * (node - 1)

    @property
    def bootstrap(self) -> str:
        """All three brokers, as clients are configured."""
        return ",".join(f"127.0.0.1:{self.port(n)}" for n in (1, 2, 3))

    async def _script(self, *args: str) -> str:
        env = {"QLARA_CLUSTER_NAME": self.name, "QLARA_CLUSTER_BASE_PORT": str(self.base_port),
               "QLARA_KAFKA_HEAP": self.heap}
        return await run_script([str(CLUSTER_SH), *args], env=env)

    async def up(self) -> None:
        """Start a fresh cluster (stopping and wiping a previous one of this name first)."""
        await self._script("down")
        await self._script("up", "--fresh")

    async def down(self) -> None:
        """Stop every node."""
        await self._script("down")

    async def kill(self, node: int) -> None:
        """kill -9 one node and wait until it is gone."""
        await self._script("kill", str(node))

    async def start(self, node: int) -> None:
        """Start one node again with its data; returns once it listens."""
        await self._script("start", str(node))


async def postgres(command: str) -> None:
    """``deploy/local/postgres.sh start|stop`` (the shared PostgreSQL: everyone sees a stop)."""
    await run_script([str(POSTGRES_SH), command], limit_s=120)


class Process:
    """One child process (a role of the service, or the receiver) with a health URL and a log file."""

    def __init__(self, name: str, argv: Sequence[str], *, port: int, env: Mapping[str, str], log: Path,
                 health_path: str = "/healthz") -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.env = dict(env)
        self.log = log
        self.health_url = f"http://127.0.0.1:{port}{health_path}"
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def start(self, *, wait_s: float = 60.0) -> None:
        """Spawn it (stderr/stdout appended to the log) and wait until its health URL answers 200."""
        if self.pid is not None:
            raise HarnessError(f"{self.name} already runs (pid {self.pid})")
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + wait_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                if self._proc.returncode is not None:
                    raise HarnessError(f"{self.name} exited with {self._proc.returncode}; see {self.log}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.health_url) as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise HarnessError(f"{self.name} did not answer {self.health_url} within {wait_s:.0f} s")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL and reap it."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self._proc.wait(), 10)

    async def stop(self) -> None:
        """SIGTERM (graceful: in-flight work finishes, offsets committed), SIGKILL after 20 s."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 20)
        await self.kill()


def role(name: str, *, port: int, env: Mapping[str, str], log_dir: Path) -> Process:
    """``qlara-events serve --role NAME`` as a child process on ``port``."""
    exe = Path(sys.executable).with_name("qlara-events")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "qlara_events.cli"]
    # A stable instance name per role: a killed and restarted consumer rejoins as the same static member.
    return Process(name, [*argv, "serve", "--role", name], port=port,
                   env={"QLARA_KAFKA_INSTANCE_ID": f"chaos-{name}-{port}", **env, "QLARA_HTTP_PORT": str(port)},
                   log=log_dir / f"{name}.log")


def receiver(*, port: int, out: Path, log_dir: Path) -> Process:
    """The partner receiver (chaos/receiver.py) as a child process on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLARA_")}
    return Process("receiver", [sys.executable, "-m", "chaos.receiver", "--port", str(port), "--out", str(out)],
                   port=port, env=env, log=log_dir / "receiver.log")
