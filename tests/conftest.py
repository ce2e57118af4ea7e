"""Session-wide infrastructure: one real Kafka and one real Postgres for the whole run.

Every test isolates itself with fresh ids and a fresh account instead of wiping shared state, so the
in-process projector can keep running across tests. Topics get a per-run prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from qlara_events.config import Settings
from qlara_events.kafka import ensure_topics
from qlara_events.server import ROLES, build_app
from qlara_events.store import accounts
from qlara_events.store.migrate import migrate

from support.infra import infrastructure
from support.live import Account, LiveServer


@pytest.fixture(scope="session")
def infra() -> Iterator[tuple[str, str]]:
    with infrastructure() as endpoints:
        yield endpoints


def make_settings(kafka: str, database: str, **overrides: str) -> Settings:
    """Settings for a test run: development secrets, a unique topic prefix and consumer group."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {
        "QLARA_KAFKA_BOOTSTRAP": kafka,
        "QLARA_DATABASE_URL": database,
        "QLARA_KAFKA_TOPIC_PREFIX": prefix,
        "QLARA_PROJECTOR_GROUP": f"{prefix}projector",
        "QLARA_KAFKA_PARTITIONS": "3",
        "QLARA_PUBLIC_BASE_URL": "https://ingest.qlara.test",
        "QLARA_INGEST_PRODUCE_TIMEOUT": "5",
        "QLARA_PROJECTOR_BATCH_WAIT_MS": "10",
        "QLARA_LOG_LEVEL": "warning",
        **overrides,
    }
    return Settings.from_env(env, dev_secrets=True)


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
    app = build_app(settings, ROLES)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # -- started site has a server
    yield LiveServer(f"http://127.0.0.1:{port}", settings)
    await runner.cleanup()


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def new_account(db: asyncpg.Pool) -> Account:
    """Create an account with one API key."""
    async with db.acquire() as conn:
        account_id, key = await accounts.create_account(conn, f"test-{uuid.uuid4().hex[:6]}")
    return Account(account_id, key)


@pytest_asyncio.fixture
async def account(db: asyncpg.Pool) -> Account:
    """A fresh account with one API key."""
    return await new_account(db)


@pytest_asyncio.fixture
async def other_account(db: asyncpg.Pool) -> Account:
    """A second, unrelated account."""
    return await new_account(db)
