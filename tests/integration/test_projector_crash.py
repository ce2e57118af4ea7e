"""A projector killed with SIGKILL mid-stream and restarted leaves no duplicate and no gap."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from qlara_events.config import Settings
from qlara_events.kafka import HEADER_VIA, ensure_topics

from support.live import (
    committed_offsets,
    end_offsets,
    now_iso,
    read_topic,
    read_topic_to_end,
    status,
    submitted,
    uid,
    wait_projected,
    wait_until,
)
from support.settings import make_settings, new_account

MESSAGES = 3000  # 6,000 events: 30 batches of 200, each split over the four lanes
KILLS = 3


def _env(settings: Settings) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
        "QLARA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QLARA_DATABASE_URL": settings.database_url,
        "QLARA_KAFKA_TOPIC_PREFIX": settings.topics.prefix,
        "QLARA_PROJECTOR_GROUP": settings.consumer_group_projector,
        "QLARA_PROJECTOR_BATCH_MAX": "200",
        "QLARA_PROJECTOR_LANES": "4",
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
        """SIGKILL while batches are in flight, three times over; after the last restart every event is applied
        exactly once."""
        s = projector_settings
        await ensure_topics(s)
        account = uid("acct-crash-")
        events = []
        for _ in range(MESSAGES):
            sub = submitted(account)
            events += [sub, status("DELIVERED", message_id=sub["messageId"])]
        await _produce(s, events)

        async def stored() -> int:
            return int(await db.fetchval(
                "select count(*) from message_events e join messages m using (message_id)"
                " where m.account_id = $1", account))

        # Several kills, each after some progress since the last restart, so every restart resumes from
        # offsets committed by a projector that was itself killed mid-stream.
        at_kills: list[int] = []
        proc = start_projector(s, spawn)
        for cycle in range(KILLS):
            target = (at_kills[-1] if at_kills else 0) + 300
            await wait_until(lambda t=target: _at_least(stored, t), timeout=60,  # type: ignore[misc]
                             what=f"the projector to be mid-stream (kill {cycle + 1})")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            at_kills.append(await stored())
            assert at_kills[-1] < len(events), f"the projector finished before kill {cycle + 1}; it proves nothing"
            proc = start_projector(s, spawn)

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
        print(f"killed at {at_kills} of {len(events)} events; duplicate status-change records: "
              f"{len(ids) - len(set(ids))}")


    async def test_replay_from_the_start_changes_nothing(self, projector_settings: Settings, db: asyncpg.Pool,
                                                          spawn: list[subprocess.Popen[bytes]]) -> None:
        """With the projector group's offsets reset to the start and the whole topic projected again, every
        row, counter and conversation is as before and no status-change record is produced again."""
        s = projector_settings
        await ensure_topics(s)
        account = (await new_account(db)).id
        campaign = uid("camp-replay-")
        events: list[dict[str, Any]] = []
        for i in range(40):
            sub = {**submitted(account), "campaignId": campaign}
            events += [sub, status("DELIVERED", message_id=sub["messageId"])]
            if i % 4 == 0:
                events.append(status("READ", message_id=sub["messageId"]))
        pmid = uid("pm-")  # a receipt that arrives before its submission, then is reconciled
        events += [status("DELIVERED", provider="twilio", provider_message_id=pmid),
                   {**submitted(account, provider="twilio", provider_message_id=pmid), "campaignId": campaign}]
        p1, p2, p3 = uid("v1-"), uid("v2-"), uid("v3-")
        events += [submitted(account, provider="vonage", provider_message_id=p1, parts=3, part_ids=[p2, p3]),
                   status("DELIVERED", provider="vonage", provider_message_id=p1),
                   status("DELIVERED", provider="vonage", provider_message_id=p2)]
        events += [{"type": "message.inbound", "id": uid("in-"), "occurredAt": now_iso(), "accountId": account,
                    "channel": "WHATSAPP", "source": f"+3933300000{i % 3}", "destination": "+393400000000",
                    "text": f"hello {i}"} for i in range(9)]
        events += events[:10]  # duplicates in the stream
        ids = sorted({e["id"] for e in events})
        await _produce(s, events)

        async def snapshot() -> dict[str, Any]:
            """Everything the projection wrote for this test, and what it produced to status-changes."""
            await wait_projected(s, timeout=60)

            async def relayed() -> bool:
                return not await db.fetchval(
                    "select count(*) from status_outbox where payload->>'accountId' = $1", account)

            await wait_until(relayed, what="the outbox relayed")
            mine, theirs = (account,), (ids,)
            queries = {
                "messages": ("select * from messages where account_id = $1 order by message_id", mine),
                "parts": ("select p.* from message_parts p join messages m using (message_id)"
                          " where m.account_id = $1 order by p.message_id, p.part", mine),
                "events": ("select * from message_events where event_id = any($1::text[]) order by event_id", theirs),
                "counters": ("select * from campaign_counters where campaign_id = $1 order by hour, status",
                             (campaign,)),
                "inbound": ("select * from inbound_messages where event_id = any($1::text[]) order by event_id",
                            theirs),
                "conversations": ("select * from conversations where account_id = $1 order by chat_id", mine),
                "conversation_messages": ("select cm.* from conversation_messages cm join conversations c"
                                          " using (chat_id) where c.account_id = $1 order by cm.event_id", mine),
                "unreadable": ("select * from unreadable_records where topic = $1 order by partition, \"offset\"",
                               (s.topics.delivery_events,)),
            }
            out: dict[str, Any] = {name: [dict(r) for r in await db.fetch(sql, *args)]
                                   for name, (sql, args) in queries.items()}
            changes = await read_topic_to_end(s, s.topics.status_changes, lambda v: True)
            out["status_changes"] = sorted(c["id"] for c in changes)
            return out

        proc = start_projector(s, spawn)
        first = await snapshot()
        assert len(first["messages"]) == 42 and first["counters"] and first["conversations"], first
        kinds = collections.Counter("inbound" if c.startswith("inbound:") else c.rsplit(":", 1)[1]
                                    for c in first["status_changes"])
        # Partitions interleave: a READ may come before its DELIVERED, which is then superseded, not produced.
        assert kinds["inbound"] == 9 and kinds["READ"] == 10 and kinds["DELIVERED"] >= 30, kinds
        proc.terminate()  # a clean stop leaves the group, so its offsets can be reset
        assert proc.wait(timeout=30) == 0
        await _reset_offsets(s)
        start_projector(s, spawn)
        again = await snapshot()
        for name in first:
            assert again[name] == first[name], f"the replay changed {name}"


async def _at_least(probe, n: int) -> bool:  # type: ignore[no-untyped-def]  # -- small local helper
    return bool(await probe() >= n)


async def _produce(s: Settings, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(s.topics.delivery_events, orjson.dumps(e), key=e["id"].encode(),
                                       headers=[(HEADER_VIA, b"canonical")]) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _reset_offsets(s: Settings) -> None:
    """Commit offset 0 on every partition of delivery-events for the (empty) projector group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.consumer_group_projector,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await end_offsets(s, s.topics.delivery_events)
        consumer.assign(list(ends))
        await consumer.commit({tp: 0 for tp in ends})
    finally:
        await consumer.stop()
    committed = await committed_offsets(s, s.consumer_group_projector)
    assert {tp: committed.get(tp) for tp in ends} == dict.fromkeys(ends, 0), "the offsets were not reset"
    assert any(ends.values()), "nothing to replay"
