"""The asyncpg pool: created once per process, with JSON codecs that use orjson."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from qlara_events.config import Settings

#: A connection, whether taken from a pool or opened directly.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def _init(conn: asyncpg.Connection) -> None:
    # Without this asyncpg returns jsonb as text; with it, as Python objects (and takes objects).
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads, format="text")


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None,
                      server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
    """A connection pool for ``settings.database_url`` (``server_settings``: session settings of its connections)."""
    pool = await asyncpg.create_pool(
        settings.database_url, min_size=min_size, max_size=max_size or settings.db_pool_max,
        init=_init, command_timeout=60, server_settings=server_settings,
    )
    assert pool is not None
    return pool
