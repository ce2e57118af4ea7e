"""A projector killed with SIGKILL mid-stream and restarted leaves no duplicate and no gap."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from qlara_events.config import Settings
from qlara_events.kafka import HEADER_VIA, ensure_topics

from support.live import read_topic, status, submitted, uid, wait_until
from support.settings import make_settings

MESSAGES = 3000  # 6,000 events: enough for dozens of 50-event batches


def _env(settings: Settings) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
        "QLARA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QLARA_DATABASE_URL": settings.database_url,
        "QLARA_KAFKA_TOPIC_PREFIX": settings.topics.prefix,
        "QLARA_PROJECTOR_GROUP": settings.consumer_group_projector,
        "QLARA_PROJECTOR_BATCH_MAX": "50",
        "QLARA_HTTP_PORT": "0",
        "QLARA_LOG_LEVEL": "warning",
    }


@pytest.fixture
def projector_settings(infra: tuple[str, str], db: asyncpg.Pool) -> Settings:
    return make_settings(*infra)


@pytest.fixture
def spawn(projector_settings: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def start_projector(settings: Settings, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "qlara_events.cli", "serve", "--role", "projector"],
                         env=_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


class TestProjectorCrash:
    """Offsets move only after the batch's transaction committed, and replays are no-ops."""

    async def test_kill_mid_stream_and_restart(self, projector_settings: Settings, db: asyncpg.Pool,
                                               spawn: list[subprocess.Popen[bytes]]) -> None:
        """SIGKILL while batches are in flight; after a restart every event is applied exactly once."""
        s = projector_settings
        await ensure_topics(s)
        account = uid("acct-crash-")
        events = []
        for _ in range(MESSAGES):
            sub = submitted(account)
            events += [sub, status("DELIVERED", message_id=sub["messageId"])]
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            futures = [await producer.send(s.topics.delivery_events, orjson.dumps(e), key=e["id"].encode(),
                                           headers=[(HEADER_VIA, b"canonical")]) for e in events]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

        async def stored() -> int:
            return int(await db.fetchval(
                "select count(*) from message_events e join messages m using (message_id)"
                " where m.account_id = $1", account))

        first = start_projector(s, spawn)
        await wait_until(lambda: _at_least(stored, 600), timeout=60, what="the projector to be mid-stream")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        at_kill = await stored()
        assert at_kill < len(events), "the projector finished before it was killed; the test proves nothing"

        start_projector(s, spawn)
        await wait_until(lambda: _at_least(stored, len(events)), timeout=120, what="all events applied")
        assert await stored() == len(events)
        statuses = await db.fetch(
            "select status, count(*) as n from messages where account_id = $1 group by status", account)
        assert {r["status"]: r["n"] for r in statuses} == {"DELIVERED": MESSAGES}
        transitions = await db.fetchval(
            "select count(*) from message_events e join messages m using (message_id)"
            " where m.account_id = $1 and e.effect = 'applied'", account)
        assert transitions == MESSAGES
        # Every transition reached qlara.status-changes at least once (duplicates allowed, counted).
        changes = await read_topic(s, s.topics.status_changes, lambda v: True, count=MESSAGES, timeout=60,
                                   unique_by="id")
        ids = [c["id"] for c in changes]
        assert len(set(ids)) == MESSAGES
        print(f"killed at {at_kill}/{len(events)} events; duplicate status-change records: {len(ids) - len(set(ids))}")


async def _at_least(probe, n: int) -> bool:  # type: ignore[no-untyped-def]  # -- small local helper
    return bool(await probe() >= n)
