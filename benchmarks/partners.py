"""Accounts with webhooks pointing at the bench's receivers, and status changes produced straight to the
dispatcher's topic at a fixed rate (open loop, latency measured from each change's scheduled time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from benchmarks.common import KAFKA
from qlara_events.standard_webhooks import new_secret
from qlara_events.store import accounts, webhooks


async def account_with_webhook(database_url: str, name: str, url: str) -> tuple[str, str]:
    """Create an account whose webhook posts to ``url``; return (account id, signing secret)."""
    conn = await asyncpg.connect(database_url)
    try:
        account_id, _ = await accounts.create_account(conn, name)
        secret = new_secret()
        await webhooks.create(conn, account_id, url, secret)
    finally:
        await conn.close()
    return account_id, secret


def change(account_id: str, message_id: str, status: str = "DELIVERED") -> dict[str, Any]:
    """A ``qlara.status-changes`` record as the projector's outbox relay produces it."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return {"id": f"{message_id}:{status}", "messageId": message_id, "customerMessageId": f"c-{message_id}",
            "accountId": account_id, "channel": "SMS", "destination": "+393331112233", "status": status,
            "previousStatus": "SENT", "statusCode": 3, "occurredAt": now, "changedAt": now,
            "eventId": f"ev-{message_id}"}


async def producer() -> AIOKafkaProducer:
    """A started producer with the service's durability settings."""
    p = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=2)
    await p.start()
    return p


async def burst(p: AIOKafkaProducer, topic: str, records: list[dict[str, Any]]) -> None:
    """Produce all records as fast as possible and await their acknowledgements."""
    futures = [await p.send(topic, value=orjson.dumps(r), key=r["messageId"].encode()) for r in records]
    await asyncio.gather(*futures)


async def paced(p: AIOKafkaProducer, topic: str, records: list[dict[str, Any]], rate: float) -> dict[str, float]:
    """Produce record ``i`` at ``t0 + i/rate`` (open loop); return messageId -> scheduled wall-clock time."""
    scheduled: dict[str, float] = {}
    futures = []
    t0 = time.time() + 0.05
    for i, r in enumerate(records):
        due = t0 + i / rate
        delay = due - time.time()
        if delay > 0.002:
            await asyncio.sleep(delay)
        scheduled[r["messageId"]] = due
        futures.append(await p.send(topic, value=orjson.dumps(r), key=r["messageId"].encode()))
    await asyncio.gather(*futures)
    return scheduled
