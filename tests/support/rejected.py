"""A long-lived reader of the rejected-payload topic, for tests that check many rejects one by one."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from qlara_events.config import Settings


class RejectedTail:
    """Every record of ``qlara.ingest-rejected`` read so far, by (via, body)."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.records: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)

    async def _poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=100)
        for recs in batch.values():
            for r in recs:
                value = orjson.loads(r.value)
                self.records[(value.get("via"), value.get("body"))].append(value)

    async def wait_for(self, via: str, body: bytes, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The records kept for ``body`` (raw request bytes) received on ``via``; fails after ``timeout``."""
        key = (via, body.decode("utf-8", "backslashreplace"))
        deadline = time.monotonic() + timeout
        while key not in self.records:
            if time.monotonic() > deadline:
                raise AssertionError(f"rejected {via} payload not in the topic after {timeout} s: {body[:200]!r}")
            await self._poll()
        return self.records[key]


@asynccontextmanager
async def rejected_tail(settings: Settings) -> AsyncIterator[RejectedTail]:
    """Tail the rejected-payload topic from its beginning."""
    consumer = AIOKafkaConsumer(settings.topics.ingest_rejected, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        yield RejectedTail(consumer)
    finally:
        await consumer.stop()
