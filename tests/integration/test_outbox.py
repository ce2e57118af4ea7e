"""The outbox behind the in-memory relay: leftovers only once they are old, acknowledged rows forgotten.

Runs on a status_outbox of its own (a schema of its own), so it neither takes nor hides other tests' rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from qlara_events.config import Settings
from qlara_events.kafka import ensure_topics
from qlara_events.projector import outbox
from qlara_events.store.db import create_pool

from support.live import read_topic, uid


class FakeProducer:
    """Records what is sent; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, orjson.loads(value), key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def change(message_id: str) -> dict[str, Any]:
    return {"id": f"{message_id}:DELIVERED", "messageId": message_id, "status": "DELIVERED"}


@pytest_asyncio.fixture
async def own_outbox(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    schema = uid("outbox_")
    await db.execute(f"create schema {schema}")
    await db.execute(f"create table {schema}.status_outbox (like public.status_outbox including all)")
    pool = await create_pool(settings, max_size=2, server_settings={"search_path": schema})
    try:
        yield pool
    finally:
        await pool.close()
        await db.execute(f"drop schema {schema} cascade")


async def ids(pool: asyncpg.Pool) -> list[str]:
    return [r["change_id"] for r in await pool.fetch("select change_id from status_outbox order by id")]


class TestOutbox:
    async def test_leftovers_relay_takes_only_old_rows(self, own_outbox: asyncpg.Pool) -> None:
        """A row younger than the leftover age is a live projector's (it produces it from memory): not taken."""
        old, young = change(uid("m-old-")), change(uid("m-young-"))
        await own_outbox.execute(
            "insert into status_outbox (change_id, topic, payload, created_at)"
            " values ($1, 't.status', $2, now() - interval '30 seconds'), ($3, 't.status', $4, now())",
            old["id"], old, young["id"], young)
        producer = FakeProducer()
        assert await outbox.relay(own_outbox, producer) == 1  # type: ignore[arg-type]  # -- a fake producer
        assert producer.sent == [("t.status", old, old["messageId"].encode())]
        assert await ids(own_outbox) == [young["id"]]

    async def test_a_restarted_projector_takes_its_predecessors_rows_at_once(self, own_outbox: asyncpg.Pool) -> None:
        """Young rows of an earlier process of the relay's instance id are taken at once; its own young rows,
        another instance's and unmarked ones wait for the leftover age."""
        dead = outbox.writer_token("proj-1", "aaaa")
        me = outbox.writer_token("proj-1", "bbbb")
        rows = {name: change(uid(f"m-{name}-")) for name in ("dead", "mine", "sibling", "prefix", "unmarked")}
        writers = {"dead": dead, "mine": me, "sibling": outbox.writer_token("proj-2", "aaaa"),
                   "prefix": outbox.writer_token("proj-10", "aaaa"), "unmarked": None}
        for name, row in rows.items():
            await own_outbox.execute(
                "insert into status_outbox (change_id, topic, payload, writer) values ($1, 't.status', $2, $3)",
                row["id"], row, writers[name])
        producer = FakeProducer()
        assert await outbox.relay(own_outbox, producer, writer=me) == 1  # type: ignore[arg-type]  # -- a fake
        assert producer.sent == [("t.status", rows["dead"], rows["dead"]["messageId"].encode())]
        assert sorted(await ids(own_outbox)) == sorted(rows[n]["id"] for n in ("mine", "sibling", "prefix",
                                                                               "unmarked"))
        # Without an instance id nothing is anyone's predecessor: the age rule alone.
        assert outbox.writer_token(None, "cccc") is None
        assert await outbox.relay(own_outbox, FakeProducer(), writer=None) == 0  # type: ignore[arg-type]

    async def test_produced_transitions_are_forgotten(self, own_outbox: asyncpg.Pool) -> None:
        """produce() sends each transition keyed by its message; forget() deletes their rows, only theirs."""
        a, b = change(uid("m-a-")), change(uid("m-b-"))
        await own_outbox.execute(
            "insert into status_outbox (change_id, topic, payload) values ($1, 't', $2), ($3, 't', $4)",
            a["id"], a, b["id"], b)
        producer = FakeProducer()
        acked = await outbox.produce(producer, "t.status", [a])  # type: ignore[arg-type]  # -- a fake producer
        assert acked == [a["id"]]
        assert producer.sent == [("t.status", a, a["messageId"].encode())]
        await outbox.forget(own_outbox, acked)
        assert await ids(own_outbox) == [b["id"]]

    async def test_a_row_kafka_refuses_does_not_hold_back_the_rest(self, settings: Settings,
                                                                   own_outbox: asyncpg.Pool) -> None:
        """A leftover for a topic that does not exist (deleted since) is postponed; the rows queued after it are
        produced to the real broker and deleted, and the relay says what it postponed."""
        topic = uid("outbox-relay.") + ".status"  # a topic of its own: the session's holds other tests' garbage
        await ensure_topics(settings, [topic])
        gone, good = change(uid("m-gone-")), change(uid("m-good-"))
        await own_outbox.execute(
            "insert into status_outbox (change_id, topic, payload, created_at)"
            " values ($1, $2, $3, now() - interval '30 seconds'), ($4, $5, $6, now() - interval '30 seconds')",
            gone["id"], uid("never-created.") + "status", gone, good["id"], topic, good)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
        await producer.start()
        try:
            with pytest.raises(outbox.RelayFailed, match="1 outbox rows postponed"):
                await outbox.relay(own_outbox, producer)
        finally:
            await producer.stop()
        assert await ids(own_outbox) == [gone["id"]]
        assert await own_outbox.fetchval("select created_at > now() - interval '5 seconds' from status_outbox")
        found = await read_topic(settings, topic, lambda v: v.get("id") == good["id"])
        assert found == [good]
