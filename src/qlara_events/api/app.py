"""Wiring of the Platform API into an aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web

from qlara_events.api import campaigns, contacts, exports, inbox, keys, media, socials, spec, status, webhooks
from qlara_events.api.auth import (
    KEYS,
    LIMITER,
    PLANS,
    POOL,
    PREFIX,
    THROTTLE,
    TRUSTED_PROXIES,
    api_key_auth,
    rate_limit_headers,
)
from qlara_events.api.shared import PUBLISHER, SIGNING_KEY, STORE
from qlara_events.api.throttle import FailureThrottle
from qlara_events.campaign_runner import CampaignRunner
from qlara_events.config import Settings
from qlara_events.dispatcher.ssrf import parse_networks
from qlara_events.http import READINESS_CHECKS
from qlara_events.ingress.publisher import Publisher
from qlara_events.logs import get_logger
from qlara_events.storage import DirectoryStore
from qlara_events.store import ratelimit
from qlara_events.store.db import create_pool
from qlara_events.store.keycache import KeyCache
from qlara_events.store.ratesync import LocalLimiter

log = get_logger("api")


def _signing_key(settings: Settings) -> bytes:
    """The download-URL signing key; without QLARA_URL_SIGNING_KEY a random one (links die with the process)."""
    if settings.url_signing_key:
        return settings.url_signing_key.encode()
    log.warning("url_signing_key_unset", consequence="download links only work on this process until it restarts")
    return secrets.token_bytes(32)


async def _prune_rate_counters(pool: asyncpg.Pool) -> None:
    """Delete expired rate-limit windows once a minute (any api process may do it; it is idempotent)."""
    while True:
        await asyncio.sleep(60)
        try:
            await ratelimit.prune(pool, time.time())
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("rate_counter_prune_failed", error=repr(exc))


def setup(app: web.Application, settings: Settings) -> None:
    """Add the API routes, the key middleware and a Postgres pool to ``app``."""
    app.middlewares.append(api_key_auth)
    app.on_response_prepare.append(rate_limit_headers)
    app[PLANS] = dict(settings.rate_limit_plans)
    app[THROTTLE] = FailureThrottle(settings.auth_failures_per_minute)
    app[TRUSTED_PROXIES] = parse_networks(settings.trusted_proxies)
    document = orjson.dumps(spec.build())

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def pool_ctx(a: web.Application) -> AsyncIterator[None]:
        a[POOL] = await create_pool(settings)
        background = [asyncio.create_task(_prune_rate_counters(a[POOL]), name="rate-counter-pruner")]
        if settings.key_cache_check_ms:
            a[KEYS] = KeyCache(settings.database_url, check_s=settings.key_cache_check_ms / 1000)
            background.append(asyncio.create_task(a[KEYS].run(), name="api-key-cache"))
        syncer = sync_pool = None
        if settings.rate_limit_sync_ms:
            # A connection of its own: a sync never queues behind the requests it is there to keep in check.
            sync_pool = await create_pool(settings, max_size=1)
            a[LIMITER] = LocalLimiter(sync_pool, settings.rate_limit_sync_ms / 1000)
            syncer = asyncio.create_task(a[LIMITER].run(), name="rate-limit-sync")
        yield
        for task in background:
            task.cancel()
        if syncer is not None:
            a[LIMITER].stop()  # -- one last sync: the counts of this process's last requests are not lost
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(syncer, 5)
        await asyncio.gather(*background, return_exceptions=True)
        if sync_pool is not None:
            await sync_pool.close()
        await a[POOL].close()

    async def db_ready() -> None:
        await app[POOL].fetchval("select 1")

    app.cleanup_ctx.append(pool_ctx)
    app[READINESS_CHECKS].append(("postgres", db_ready))
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    status.add_routes(app)
    webhooks.add_routes(app, settings)
    keys.add_routes(app, settings)
    inbox.add_routes(app, settings)
    app[STORE] = DirectoryStore(settings.storage_dir)
    app[SIGNING_KEY] = _signing_key(settings)
    media.add_routes(app, settings)
    exports.add_routes(app, settings)
    campaigns.add_routes(app, settings)
    publisher = Publisher(settings)
    app[PUBLISHER] = publisher

    async def publisher_ctx(a: web.Application) -> AsyncIterator[None]:
        await publisher.start(wait_s=10)
        runner_pool = await create_pool(settings, max_size=2)
        runner = CampaignRunner(settings, runner_pool, publisher)
        task = asyncio.create_task(runner.run(), name="campaign-runner")
        yield
        runner.stop()
        await asyncio.wait_for(task, 30)
        await runner_pool.close()
        await publisher.stop()

    app.cleanup_ctx.append(publisher_ctx)
    app[READINESS_CHECKS].append(("kafka_api", publisher.check))
    socials.add_routes(app)
    contacts.add_routes(app, settings)
