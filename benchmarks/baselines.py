"""The baselines measured in the same run: bare aiohttp (``baseline_http``), aiokafka producing directly
(``baseline_kafka``) and asyncpg COPY into an unindexed table (``baseline_copy``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import orjson

from benchmarks.common import KAFKA, PORTS, Context, Service, service
from qlara_events.config import Settings, Topics
from qlara_events.kafka import ensure_topics, make_producer


@contextlib.asynccontextmanager
async def http_server(ctx: Context) -> AsyncIterator[Service]:
    """The bare aiohttp baseline as a subprocess on its port."""
    port = PORTS["baseline_http"]
    argv = [sys.executable, "-m", "benchmarks.baseline_http", str(port)]
    async with service(ctx, "baseline_http", argv, ctx.env("baseline"), port) as svc:
        yield svc


async def kafka_produce(ctx: Context, scenario: str, batches: Sequence[Sequence[tuple[bytes, bytes]]],
                        concurrency: int = 32) -> dict[str, Any]:
    """Produce ``batches`` with the ingress's own producer settings (acks=all, idempotent), each batch awaited
    whole like one ingest request, ``concurrency`` batches at a time; return events/s."""
    settings = Settings(kafka_bootstrap=KAFKA, topics=Topics(ctx.prefix(scenario) + "baseline."))
    await ensure_topics(settings, [settings.topics.delivery_events])
    producer = make_producer(settings, client_id="bench-baseline")
    await producer.start()
    topic = settings.topics.delivery_events
    headers = [("qlara-via", b"bench")]
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            batch = queue.pop()
            futures = [await producer.send(topic, value=v, key=k, headers=headers) for k, v in batch]
            await asyncio.gather(*futures)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    events = sum(len(b) for b in batches)
    return {"events": events, "seconds": round(elapsed, 2), "events_per_s": round(events / elapsed, 1)}


COPY_TABLE = "bench_copy_baseline"
COPY_COLUMNS = ("event_id", "type", "message_id", "provider", "provider_message_id", "account_id", "status",
                "raw_status", "effect", "via", "occurred_at", "received_at", "payload")


async def copy_rows(url: str, chunks: int, make_chunk: Callable[[int], list[tuple[Any, ...]]]) -> dict[str, Any]:
    """COPY ``chunks`` chunks of history rows into an unindexed (ordinary, logged) table; events/s of the
    COPY itself (building the rows in Python is not timed)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"drop table if exists {COPY_TABLE}")
        await conn.execute(
            f"create table {COPY_TABLE} (event_id text, type text, message_id text, provider text,"
            " provider_message_id text, account_id text, status text, raw_status text, effect text, via text,"
            " occurred_at timestamptz, received_at timestamptz, payload jsonb)")
        # COPY goes over asyncpg's binary protocol: jsonb's binary form is a version byte (1) and the text.
        await conn.set_type_codec("jsonb", encoder=lambda v: b"\x01" + orjson.dumps(v),
                                  decoder=lambda b: orjson.loads(b[1:]), schema="pg_catalog", format="binary")
        total = 0
        elapsed = 0.0
        for i in range(chunks):
            rows = make_chunk(i)
            started = time.perf_counter()
            await conn.copy_records_to_table(COPY_TABLE, records=rows, columns=list(COPY_COLUMNS))
            elapsed += time.perf_counter() - started
            total += len(rows)
        await conn.execute(f"drop table {COPY_TABLE}")
    finally:
        await conn.close()
    return {"rows": total, "seconds": round(elapsed, 2), "events_per_s": round(total / elapsed, 1)}
