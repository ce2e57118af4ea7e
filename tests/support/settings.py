"""Test settings and accounts, shared by the fixtures and by tests that start their own processes."""

from __future__ import annotations

import tempfile
import uuid

import asyncpg

from qlara_events.config import Settings
from qlara_events.store import accounts

from support.live import Account


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
        "QLARA_STORAGE_DIR": tempfile.mkdtemp(prefix="qlara-test-storage-"),
        "QLARA_DISPATCHER_GROUP": f"{prefix}dispatcher",
        "QLARA_WEBHOOK_REQUIRE_HTTPS": "false",
        "QLARA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        # The loopback receivers listen on ephemeral ports.
        "QLARA_WEBHOOK_ALLOWED_PORTS": "1024-65535",
        # Every test's requests come from 127.0.0.1, many with keys they just created: a throttle this high never
        # stands in their way (test_security_auth runs a server of its own with a low one).
        "QLARA_AUTH_FAILURES_PER_MINUTE": "100000",
        "QLARA_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3,0.3",
        "QLARA_WEBHOOK_TIMEOUT": "3",
        "QLARA_WEBHOOK_BREAKER_COOLDOWN": "1",
        "QLARA_WEBHOOK_LEASE_MARGIN": "1",
        **overrides,
    }
    return Settings.from_env(env, dev_secrets=True)


async def new_account(db: asyncpg.Pool) -> Account:
    """Create an account with one API key."""
    async with db.acquire() as conn:
        account_id, key = await accounts.create_account(conn, f"test-{uuid.uuid4().hex[:6]}")
    return Account(account_id, key)
