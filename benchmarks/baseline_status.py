"""``baseline_status``: the floor of "one read per request" for status polling.

A bare aiohttp server (``web.run_app``, one process, the api's pool size) that resolves the caller's key from
a dict loaded at start (no cache to keep right, no rate limit) and answers each status read with the api's
own indexed query, one round trip (store/messages.py: ``SQL_BY_CUSTOMER_ID``, ``SQL_BY_CUSTOMER_IDS`` for
``ids=``), rows to JSON with orjson. Run: ``python -m benchmarks.baseline_status PORT DATABASE_URL``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web

from qlara_events.store.messages import SQL_BY_CUSTOMER_ID, SQL_BY_CUSTOMER_IDS

POOL = web.AppKey("pool", asyncpg.Pool)
KEYS = web.AppKey("keys", dict[bytes, str])
POOL_MAX = 10  # -- the api's default QLARA_DB_POOL_MAX


def _json(row: asyncpg.Record) -> dict[str, object]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


async def status(request: web.Request) -> web.Response:
    """GET .../messages/status[/{id}]?channel=&ids=: one query, 401 for an unknown key."""
    account = request.app[KEYS].get(hashlib.sha256(request.headers.get("X-API-Key", "").encode()).digest())
    if account is None:
        return web.Response(status=401)
    channel = request.query.get("channel", "SMS")
    one = request.match_info.get("cid")
    pool = request.app[POOL]
    if one is not None:
        row = await pool.fetchrow(SQL_BY_CUSTOMER_ID, account, channel, one)
        if row is None:
            return web.Response(status=404)
        return web.Response(body=orjson.dumps(_json(row)), content_type="application/json")
    ids = sorted({i for i in request.query.get("ids", "").split(",") if i})
    rows = await pool.fetch(SQL_BY_CUSTOMER_IDS, account, channel, ids)
    return web.Response(body=orjson.dumps([_json(r) for r in rows]), content_type="application/json")


async def ready(_: web.Request) -> web.Response:
    """Readiness, like the service's /readyz."""
    return web.Response(text="ok")


def main() -> None:
    """Serve on 127.0.0.1:PORT until SIGTERM."""
    url = sys.argv[2]

    async def db(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await asyncpg.create_pool(url, min_size=1, max_size=POOL_MAX)
        app[KEYS] = {r["key_hash"]: r["account_id"]
                     for r in await app[POOL].fetch("select key_hash, account_id from api_keys")}
        yield
        await app[POOL].close()

    app = web.Application()
    app.cleanup_ctx.append(db)
    app.router.add_get("/partner-gateway/v1/messages/status", status)
    app.router.add_get("/partner-gateway/v1/messages/status/{cid}", status)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, shutdown_timeout=5,
                max_line_size=1 << 20)


if __name__ == "__main__":
    main()
