"""Wiring of the Platform API into an aiohttp application."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from qlara_events.api import spec, status, webhooks
from qlara_events.api.auth import POOL, PREFIX, api_key_auth
from qlara_events.config import Settings
from qlara_events.http import READINESS_CHECKS
from qlara_events.store.db import create_pool


def setup(app: web.Application, settings: Settings) -> None:
    """Add the API routes, the key middleware and a Postgres pool to ``app``."""
    app.middlewares.append(api_key_auth)
    document = orjson.dumps(spec.build())

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def pool_ctx(a: web.Application) -> AsyncIterator[None]:
        a[POOL] = await create_pool(settings)
        yield
        await a[POOL].close()

    async def db_ready() -> None:
        await app[POOL].fetchval("select 1")

    app.cleanup_ctx.append(pool_ctx)
    app[READINESS_CHECKS].append(("postgres", db_ready))
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    status.add_routes(app)
    webhooks.add_routes(app, settings)
