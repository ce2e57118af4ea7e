"""Builds the aiohttp application for a set of roles: one bootstrap, every role's resources in order.

``ingress`` and ``api`` add routes; ``projector`` (and later ``dispatcher``) run as background tasks
that are stopped, after in-flight requests finish, when the server shuts down (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Final

from aiohttp import web

from qlara_events import api, ingress
from qlara_events.api import app as api_app
from qlara_events.config import Settings
from qlara_events.http import READINESS_CHECKS, base_app
from qlara_events.ingress import app as ingress_app
from qlara_events.logs import get_logger
from qlara_events.projector.consumer import Projector
from qlara_events.store.db import create_pool

ROLES: Final = ("ingress", "api", "projector", "dispatcher")
PROJECTOR: Final = web.AppKey("projector", Projector)

log = get_logger("server")
_ = (api, ingress)  # -- the packages document the roles; keep their imports explicit


def build_app(settings: Settings, roles: Iterable[str]) -> web.Application:
    """An application serving ``roles`` (and /metrics, /healthz, /readyz)."""
    wanted = set(roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}")
    app = base_app("all" if wanted == set(ROLES) else "+".join(sorted(wanted)))
    if "ingress" in wanted:
        ingress_app.setup(app, settings)
    if "api" in wanted:
        api_app.setup(app, settings)
    if "projector" in wanted:
        app.cleanup_ctx.append(_projector_ctx(settings))
    return app


def _projector_ctx(settings: Settings):  # type: ignore[no-untyped-def]  # -- returns an aiohttp cleanup_ctx
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings, max_size=4)
        projector = Projector(settings, pool)
        app[PROJECTOR] = projector
        task = asyncio.create_task(projector.run(), name="projector")

        async def alive() -> None:
            if task.done():
                raise RuntimeError("projector loop has stopped")
            await pool.fetchval("select 1")

        app[READINESS_CHECKS].append(("projector", alive))
        yield
        projector.stop()
        try:
            await asyncio.wait_for(task, 30)
        except TimeoutError:
            log.warning("projector_stop_timeout")
        finally:
            await pool.close()

    return ctx
