"""Relaying committed status transitions from the Postgres outbox to ``qlara.status-changes``.

Rows are claimed with ``FOR UPDATE SKIP LOCKED``, produced, acknowledged, then deleted in the same
transaction: any number of projector processes can relay at once, and a crash before the delete only
means the rows are produced again (each carries a stable ``id`` that the dispatcher deduplicates on).
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

SQL_CLAIM: Final = "select id, topic, payload from status_outbox order by id limit $1 for update skip locked"
SQL_DELETE: Final = "delete from status_outbox where id = any($1::bigint[])"


async def relay(pool: asyncpg.Pool, producer: AIOKafkaProducer, *, limit: int = 1000) -> int:
    """Relay outbox rows (each to the topic it was queued for) until none are left; return how many."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(SQL_CLAIM, limit)
            if not rows:
                return total
            futures = [
                await producer.send(r["topic"], value=orjson.dumps(r["payload"]),
                                    key=r["payload"]["messageId"].encode())
                for r in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(SQL_DELETE, [r["id"] for r in rows])
        total += len(rows)
        if len(rows) < limit:
            return total
