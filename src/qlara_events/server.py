"""Builds the aiohttp application for a set of roles: one bootstrap, every role's resources in order.

``ingress`` and ``api`` add routes; ``projector`` (and later ``dispatcher``) run as background tasks
that are stopped, after in-flight requests finish, when the server shuts down (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final, Protocol

import asyncpg
from aiohttp import web

from qlara_events import api, ingress
from qlara_events.api import app as api_app
from qlara_events.api import status
from qlara_events.config import Settings
from qlara_events.dispatcher.worker import Dispatcher
from qlara_events.http import READINESS_CHECKS, base_app, ops_app
from qlara_events.ingress import app as ingress_app
from qlara_events.logs import get_logger
from qlara_events.projector.consumer import Projector
from qlara_events.projector.partitions import PartitionKeeper
from qlara_events.sandbox import Behaviour, Sandbox
from qlara_events.store.db import create_pool

ROLES: Final = ("ingress", "api", "projector", "dispatcher")

#: The server cancels a request's handler when its client disconnects (aiohttp's ``handler_cancellation``):
#: the ingress's views stop at once and free their admission slot; every other view is shielded from it and
#: runs to its end, as it did before (``http.finish_unless_cancellable``). Passed by ``cli`` and the tests.
HANDLER_CANCELLATION: Final = True
#: The request-line limit of every role's server (passed by ``cli`` and the tests): long enough for the batch
#: status read's 500 ids (api/status.py); header limits stay aiohttp's.
MAX_LINE_SIZE: Final = status.MAX_REQUEST_LINE

log = get_logger("server")
_ = (api, ingress)  # -- the packages document the roles; keep their imports explicit


def build_app(settings: Settings, roles: Iterable[str], *, sandbox: Behaviour | None = None) -> web.Application:
    """An application serving ``roles`` (and /metrics, /healthz, /readyz), plus the sandbox upstream if asked."""
    wanted = set(roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    app = base_app("all" if wanted == set(ROLES) else "+".join(sorted(wanted)), ops_routes=settings.ops_port is None)
    if settings.ops_port is not None:
        app.cleanup_ctx.append(_ops_ctx(settings))
    if "ingress" in wanted:
        ingress_app.setup(app, settings)
    if "api" in wanted:
        api_app.setup(app, settings)
    if "projector" in wanted:
        app.cleanup_ctx.append(_projector_ctx(settings))
        app.cleanup_ctx.append(_loop_ctx("partitions", settings, PartitionKeeper, 1))
    if "dispatcher" in wanted:
        app.cleanup_ctx.append(_dispatcher_ctx(settings))
    if sandbox is not None:
        ingress_url = f"http://{settings.http_host}:{settings.http_port}"
        app.cleanup_ctx.append(_loop_ctx("sandbox", settings, lambda _: Sandbox(settings, ingress_url, sandbox), 1))
    return app


CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def _ops_ctx(settings: Settings) -> CleanupCtx:
    """Serve /metrics, /healthz and /readyz on ``QLARA_OPS_PORT`` for the application's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(ops_app(app), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.ops_host, settings.ops_port).start()
        log.info("ops_port", host=settings.ops_host, port=settings.ops_port)
        yield
        await runner.cleanup()

    return ctx


class _Loop(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


def _loop_ctx(name: str, settings: Settings, make: Callable[[asyncpg.Pool], _Loop], pool_size: int,
              server_settings: dict[str, str] | None = None) -> CleanupCtx:
    """Run a background role (projector, dispatcher...) for the application's lifetime, supervised.

    A loop that dies from an error nobody anticipated is logged and started again with backoff, instead
    of leaving a process that answers /healthz but does no work; /readyz reports it while it is down.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings, max_size=pool_size, server_settings=server_settings)
        stopping = asyncio.Event()
        current: list[_Loop] = []
        healthy = asyncio.Event()

        async def supervise() -> None:
            delay = 1.0
            while not stopping.is_set():
                loop = make(pool)
                current[:] = [loop]
                healthy.set()
                try:
                    await loop.run()
                    return
                except Exception as exc:  # -- anything the loop did not handle: restart it rather than stall
                    healthy.clear()
                    log.exception(f"{name}_crashed", error=repr(exc), restart_in_s=delay)
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)

        task = asyncio.create_task(supervise(), name=name)

        async def alive() -> None:
            if task.done() or not healthy.is_set():
                raise RuntimeError(f"{name} loop is not running")
            await pool.fetchval("select 1")

        app[READINESS_CHECKS].append((name, alive))
        yield
        stopping.set()
        for loop in current:
            loop.stop()
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            log.warning(f"{name}_stop_timeout")
        finally:
            await pool.close()

    return ctx


#: The projector's lookups are by primary key, one per event of a batch, on tables that live in shared buffers.
#: With the default random_page_cost (4, a spinning disk's) the planner prices 1,000 index probes above a
#: sequential scan of a table of 50,000 messages, and hash-joins the whole table for every batch (benchmarks/
#: README.md, "Projector: profile and EXPLAIN (session 3)"); at 1.1 it probes the index at any table size.
PROJECTOR_SESSION: Final = {"random_page_cost": "1.1"}


def _projector_ctx(settings: Settings) -> CleanupCtx:
    # One connection per lane, one for the outbox leftovers and one to spare.
    return _loop_ctx("projector", settings, lambda pool: Projector(settings, pool), settings.projector_lanes + 2,
                     PROJECTOR_SESSION)


def _dispatcher_ctx(settings: Settings) -> CleanupCtx:
    return _loop_ctx("dispatcher", settings, lambda pool: Dispatcher(settings, pool), 8)
