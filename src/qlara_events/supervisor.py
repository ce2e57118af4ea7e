"""``serve --role all --processes``: every role in a process of its own, under one supervisor.

One Python process is one core at most; the roles of a busy pipeline (ingress, projector, dispatcher) need
more, so ``make run`` runs them as the deployment does, and this supervisor keeps its contract: one base URL
for the ingress and the API (``ingress,api`` on the configured port), the projector and the dispatcher on the
next two ports (their /metrics, /healthz and /readyz), one log stream (the children write to the
supervisor's stdout and stderr), one ``ready`` line once every child answers /readyz, and Ctrl-C (SIGINT) or
SIGTERM stopping all of them gracefully. A child that dies is started again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Final

import aiohttp

from qlara_events.logs import get_logger

log = get_logger("supervisor")

#: The children: roles, and the offset of their port from the base port.
LAYOUT: Final = (("ingress,api", 0), ("projector", 1), ("dispatcher", 2))
STOP_GRACE_S: Final = 40.0


@dataclasses.dataclass
class Child:
    """One role process."""

    roles: str
    port: int
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


async def _ready(http: aiohttp.ClientSession, port: int) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    return False


async def supervise(base_port: int, child_args: Sequence[str], *, banner: Sequence[str], sandbox: bool,
                    ops_base: int | None = None) -> int:
    """Run the children until SIGINT/SIGTERM; return the exit status.

    With ``ops_base`` (``QLARA_OPS_PORT``) the children serve /metrics and /readyz on ``ops_base`` + their
    offset, and readiness is read there.
    """
    children = [
        Child(roles, base_port + offset,
              [sys.executable, "-m", "qlara_events.cli", "serve", "--role", roles, "--child", *child_args,
               *(["--sandbox"] if sandbox and roles.startswith("ingress") else [])])
        for roles, offset in LAYOUT
    ]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    async def start(child: Child) -> None:
        env = {**os.environ, "QLARA_HTTP_PORT": str(child.port)}
        if ops_base is not None:  # each child's ops port at the same offset as its serving port
            env["QLARA_OPS_PORT"] = str(ops_base + child.port - base_port)
        # A restarted child rejoins its consumer groups as the same static member: its partitions come back
        # at once instead of after the session timeout and a rebalance.
        env.setdefault("QLARA_KAFKA_INSTANCE_ID", f"{socket.gethostname()}-{child.port}")
        # Its own process group: Ctrl-C reaches the supervisor, which stops the children in order.
        child.proc = await asyncio.create_subprocess_exec(*child.argv, env=env, start_new_session=True)

    async def keep(child: Child) -> None:
        delay = 1.0
        while not stopping.is_set():
            await start(child)
            assert child.proc is not None
            waiter = asyncio.ensure_future(child.proc.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stopping.is_set():
                waiter.cancel()
                return
            child.restarts += 1
            log.error("role_exited", roles=child.roles, returncode=child.proc.returncode, restart_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 30.0)

    keepers = [asyncio.create_task(keep(c), name=f"keep-{c.roles}") for c in children]
    async with aiohttp.ClientSession() as http:
        while not stopping.is_set():
            ready_ports = [c.port if ops_base is None else ops_base + c.port - base_port for c in children]
            if all([await _ready(http, port) for port in ready_ports]):
                print("\n".join([*banner, f"ready on http://127.0.0.1:{base_port} (Ctrl-C to stop)"]), flush=True)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.25)
    await stopping.wait()
    # The ingress first (no new events), then the consumers finish their batches and commit.
    for child in children:
        if child.proc is not None and child.proc.returncode is None:
            child.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.proc.wait(), STOP_GRACE_S)
            if child.proc.returncode is None:
                log.warning("role_killed", roles=child.roles)
                child.proc.kill()
                await child.proc.wait()
    for k in keepers:
        k.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    print("stopped: every role finished its in-flight work and committed its offsets", flush=True)
    return 0
