"""Relaying committed status transitions to ``qlara.status-changes``: from memory, with the outbox behind it.

A batch's transitions are written to ``status_outbox`` in the batch's transaction. Right after the commit
the projector produces the very payloads it just wrote (:func:`produce`) and awaits the acknowledgements;
their rows are then deleted by the projector's next batch transaction (or by :func:`forget` when no batch
follows). The rows only matter when a projector dies between its commit and those acknowledgements:
:func:`relay` then picks them up, but only rows older than ``min_age_s``, so it does not race a live
projector's in-memory relay (its own or another process's) — except the rows of its own predecessor: a
projector with a stable instance id (``QLARA_KAFKA_INSTANCE_ID``, which Kafka's static membership keeps to one
live process) marks its rows ``<instance id>:<start token>``, and a restarted one relays the rows of an earlier
token of its instance id at once, so a kill does not hold those transitions back for ``min_age_s``.

Rows are claimed ``FOR UPDATE SKIP LOCKED``, produced, acknowledged, then deleted in the same transaction, so
any number of processes can relay at once, and a crash before a delete only means a record is produced again
(each carries a stable ``id`` that the dispatcher deduplicates on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from qlara_events.store.db import Conn

#: Rows older than this are leftovers of a projector that stopped between commit and acknowledgement.
LEFTOVER_AGE_S: Final = 10.0

SQL_CLAIM: Final = """
select id, topic, payload from status_outbox
where created_at < now() - make_interval(secs => $2) or (starts_with(writer, $3) and writer <> $4)
order by id limit $1 for update skip locked
"""
SQL_DELETE: Final = "delete from status_outbox where id = any($1::bigint[])"
#: Rows whose produce failed go to the back of the line: they wait ``min_age_s`` again, and the rows behind
#: them are relayed meanwhile instead of waiting behind one that cannot be produced (a topic that is gone).
SQL_POSTPONE: Final = "update status_outbox set created_at = now(), writer = null where id = any($1::bigint[])"
#: A record queued by another writer than the projector (an inbox reply's send request): same table, same relay.
SQL_ENQUEUE: Final = "insert into status_outbox (change_id, topic, payload) values ($1, $2, $3)"
#: Rows another relay holds are left to it (it deletes them after producing).
SQL_FORGET: Final = """
delete from status_outbox where id in
    (select id from status_outbox where change_id = any($1::text[]) for update skip locked)
"""


async def produce(producer: AIOKafkaProducer, topic: str, transitions: Sequence[dict[str, Any]]) -> list[str]:
    """Produce ``transitions`` (keyed by message id) and await every acknowledgement; return their ids."""
    futures = [
        await producer.send(topic, value=orjson.dumps(t), key=t["messageId"].encode()) for t in transitions
    ]
    await asyncio.gather(*futures)
    return [t["id"] for t in transitions]


async def enqueue(conn: Conn, topic: str, change_id: str, payload: dict[str, Any]) -> None:
    """Queue ``payload`` (which has a ``messageId``, its key) for ``topic`` in the caller's transaction.

    The caller produces it after its commit, then deletes it with :func:`forget`; if that produce fails, the
    projectors' leftovers relay produces it once it is :data:`LEFTOVER_AGE_S` old.
    """
    await conn.execute(SQL_ENQUEUE, change_id, topic, payload)


async def forget(pool: asyncpg.Pool, change_ids: Sequence[str]) -> None:
    """Delete the outbox rows of transitions already acknowledged by Kafka."""
    if change_ids:
        await pool.execute(SQL_FORGET, list(change_ids))


def writer_token(instance_id: str | None, start_token: str) -> str | None:
    """What a projector marks its outbox rows with: ``<instance id>:<start token>``, or None without an id."""
    return f"{instance_id}:{start_token}" if instance_id else None


async def relay(pool: asyncpg.Pool, producer: AIOKafkaProducer, *, limit: int = 1000,
                min_age_s: float = LEFTOVER_AGE_S, writer: str | None = None) -> int:
    """Relay outbox rows older than ``min_age_s`` (each to the topic it was queued for), and at any age those
    of an earlier process of ``writer``'s instance id, until none are left; return how many were produced.

    Each row stands alone: one that Kafka refuses (its topic deleted, say) is postponed and logged, and never
    holds back the rows queued after it. The error of the first such row is raised once the others are done,
    so the caller logs and retries.
    """
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SQL_CLAIM, limit, min_age_s, _instance_prefix(writer), writer)
            if not rows:
                return total
            outcomes = await asyncio.gather(*(_send(producer, r) for r in rows), return_exceptions=True)
            done = [r["id"] for r, o in zip(rows, outcomes, strict=True) if o is None]
            failed = [(r, o) for r, o in zip(rows, outcomes, strict=True) if o is not None]
            if done:
                await conn.execute(SQL_DELETE, done)
            if failed:
                await conn.execute(SQL_POSTPONE, [r["id"] for r, _ in failed])
        total += len(done)
        if failed:
            first = failed[0][1]
            raise RelayFailed(f"{len(failed)} outbox rows postponed, first for topic {failed[0][0]['topic']!r}: "
                              f"{first!r}") from first if isinstance(first, BaseException) else None
        if len(rows) < limit:
            return total


def _instance_prefix(writer: str | None) -> str | None:
    return writer.rpartition(":")[0] + ":" if writer else None


class RelayFailed(Exception):
    """Some outbox rows could not be produced; they were postponed, the others relayed."""


async def _send(producer: AIOKafkaProducer, row: asyncpg.Record) -> None:
    """Produce one outbox row and await its acknowledgement."""
    payload = row["payload"]
    fut = await producer.send(row["topic"], value=orjson.dumps(payload), key=payload["messageId"].encode())
    await fut
