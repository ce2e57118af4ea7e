"""Session-wide infrastructure: one real Kafka and one real Postgres for the whole run.

Every test isolates itself with fresh ids and a fresh account instead of wiping shared state, so the
in-process projector can keep running across tests. Topics get a per-run prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from qlara_events.config import Settings
from qlara_events.kafka import ensure_topics
from qlara_events.server import ROLES
from qlara_events.store.migrate import migrate

from support.infra import infrastructure
from support.live import Account, LiveServer, serve
from support.settings import make_settings, new_account


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def settings(infra: tuple[str, str]) -> Settings:
    return make_settings(*infra)


@pytest_asyncio.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a freshly migrated test database."""
    from qlara_events.store.db import create_pool

    pool = await create_pool(settings, max_size=5)
    async with pool.acquire() as conn:
        await conn.execute("drop schema public cascade; create schema public")
        await migrate(conn)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def server(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[LiveServer]:
    """Every role in this process, serving on a free loopback port."""
    await ensure_topics(settings)
    async with serve(settings, ROLES) as live:
        yield live


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def account(db: asyncpg.Pool) -> Account:
    """A fresh account with one API key."""
    return await new_account(db)


@pytest_asyncio.fixture
async def other_account(db: asyncpg.Pool) -> Account:
    """A second, unrelated account."""
    return await new_account(db)
