"""``projector_drain``: events/s a projector drains from a pre-filled topic into Postgres, against two baselines
measured in the same run: asyncpg COPY of the same number of history rows into an unindexed table
(``baseline_copy``: what Postgres takes in at best), and a minimal consumer writing the projector's rows into
the same migrated tables (``baseline_minimal``, benchmarks/minimal_projector.py: the cost of the schema, so
the projector's ratio to it is the cost of our code).

Half the events are ``message.submitted``, half their DELIVERED receipts (each a real transition, so the
outbox and its relay to ``qlara.status-changes`` are part of the work), produced in chunks so a receipt
follows its submission on the same partition, as it would in production.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from benchmarks import baselines, events, profiling
from benchmarks.common import (
    BIN,
    KAFKA,
    Context,
    CpuMeter,
    progress,
    reset_database,
    role,
    shared_infra,
    wal_position,
    with_wal,
)

TARGET = ">= 20,000 events/s"
CHUNK = 10_000


def sizes(quick: bool) -> tuple[int, float]:
    """Events to drain and the longest the drain may take."""
    return (60_000, 60.0) if quick else (1_000_000, 480.0)


async def produce(topic: str, total: int, account: str) -> float:
    """Pre-produce ``total`` events (submission, then receipt, per message); return events/s of the fill."""
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        done = 0
        while done < total:
            n = min(CHUNK, (total - done) // 2)
            mids = [events.unique("d") for _ in range(n)]
            evs = [events.submitted(account, m, "SM" + m) for m in mids] + [events.delivered("SM" + m) for m in mids]
            futures = []
            for ev in evs:
                key, value, headers = events.kafka_record(ev)
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            await asyncio.gather(*futures)
            done += 2 * n
            if n == 0:
                break
    finally:
        await producer.stop()
    return total / (time.perf_counter() - started)


async def lag(admin: AIOKafkaAdminClient, consumer_end: dict[TopicPartition, int], group: str) -> int:
    """Records of the topic not yet committed by ``group``. A group that has just been created may have no
    coordinator yet (the broker answers GroupCoordinatorNotAvailable for a moment): then nothing is committed."""
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except GroupCoordinatorNotAvailableError:
        return sum(consumer_end.values())
    return sum(end - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
               for tp, end in consumer_end.items())


async def end_offsets(topic: str) -> dict[TopicPartition, int]:
    """The topic's end offsets (a group-less consumer subscribed to it learns its partitions)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def drained(admin: AIOKafkaAdminClient, ends: dict[TopicPartition, int], group: str, total: int, cap_s: float,
                  meter_of: Callable[[], CpuMeter], label: str,
                  url: str) -> tuple[float, int, float, dict[str, Any] | None]:
    """Poll ``group``'s lag until 0 or ``cap_s``; (events/s from its first commit, records left, finish time,
    CPU per process from the first commit to the end). The meter is made at the first commit, when the
    consumer's database connections exist (shared_infra() finds backends connected at that moment)."""
    first: tuple[float, int] | None = None
    meter: CpuMeter | None = None
    wal_before = 0
    remaining = total
    deadline = time.monotonic() + cap_s
    last_print = 0.0
    while time.monotonic() < deadline:
        remaining = await lag(admin, ends, group)
        t = time.monotonic()
        if first is None and remaining < total:
            first = (t, remaining)
            meter = meter_of()
            meter.start()
            wal_before = await wal_position(url)
        if remaining == 0:
            break
        if t - last_print > 10:
            progress(f"  {label}: {total - remaining}/{total} committed")
            last_print = t
        await asyncio.sleep(0.25)
    finished = time.monotonic()
    if first is None or meter is None:
        return 0.0, remaining, finished, None
    cpu = with_wal(meter.stop(first[1] - remaining), wal_before, await wal_position(url))
    return (first[1] - remaining) / max(finished - first[0], 1e-6), remaining, finished, cpu


async def minimal_baseline(ctx: Context, topic: str, total: int, cap_s: float, ends: dict[TopicPartition, int],
                           admin: AIOKafkaAdminClient) -> dict[str, Any]:
    """Drain the same topic with benchmarks/minimal_projector.py into the freshly migrated tables."""
    group = f"bench-{ctx.run_id}-drain-minimal"
    status_topic = ctx.prefix("drain") + "qlara.status-changes"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "python"), "-m", "benchmarks.minimal_projector", topic, status_topic, group, ctx.database_url,
        str(total), env=ctx.env("drain"), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        rate, remaining, _, cpu = await drained(
            admin, ends, group, total, cap_s, lambda: CpuMeter({"minimal_consumer": [proc.pid], **shared_infra()}),
            "baseline_minimal", ctx.database_url)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    if remaining and err:
        progress(f"  baseline_minimal stderr: {err.decode()[-1500:]}")
    return {"events_per_s": round(rate, 1), "drained": total - remaining, "cpu": cpu}


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Fill, baseline COPY, then drain with one projector process."""
    total, cap_s = sizes(ctx.quick)
    await reset_database(ctx, "drain")
    topic = ctx.prefix("drain") + "qlara.delivery-events"
    account = "acct-bench-drain"
    progress(f"projector_drain: producing {total} events to {topic}")
    fill_rate = await produce(topic, total, account)
    progress(f"  produced at {fill_rate:.0f} events/s; baseline_copy of {total} rows")
    now = dt.datetime.now(dt.UTC)

    def chunk(i: int) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for j in range(CHUNK // 2):
            mid = f"copy-{i}-{j}"
            sub = events.submitted(account, mid, "SM" + mid)
            st = events.delivered("SM" + mid)
            rows.append((sub["id"], sub["type"], mid, "twilio", "SM" + mid, account, None, None, "submitted",
                         "bench", now, now, sub))
            rows.append((st["id"], st["type"], mid, "twilio", "SM" + mid, account, "DELIVERED", "delivered",
                         "applied", "bench", now, now, st))
        return rows

    base = await baselines.copy_rows(ctx.database_url, total // CHUNK, chunk)
    progress(f"  baseline_copy: {base['events_per_s']} rows/s")
    ends = await end_offsets(topic)
    group = ctx.env("drain")["QLARA_PROJECTOR_GROUP"]
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        minimal = await minimal_baseline(ctx, topic, total, cap_s, ends, admin)
        progress(f"  baseline_minimal: {minimal['events_per_s']} events/s; the projector drains into empty tables")
        await reset_database(ctx, "drain")
        spawned = time.monotonic()
        async with role(ctx, "drain", "projector") as proj:
            async with profiling.maybe(ctx, "projector_drain-projector", proj.pid, 10.0 if ctx.quick else 20.0) \
                    as prof:
                rate, remaining, finished, cpu = await drained(
                    admin, ends, group, total, cap_s, lambda: CpuMeter({"projector": [proj.pid], **shared_infra()}),
                    "drain", ctx.database_url)
    finally:
        await admin.close()
    drained_n = total - remaining
    ratio = rate / base["events_per_s"] if base["events_per_s"] else None
    progress(f"  projector: {rate:.0f} events/s ({drained_n}/{total} drained)")
    return {
        "value": round(rate, 1), "unit": "events/s (projector, one process)", "baseline": base["events_per_s"],
        "ratio": None if ratio is None else round(ratio, 3), "target": TARGET, "met": rate >= 20_000,
        "events": total, "drained": drained_n, "capped_at_s": None if remaining == 0 else cap_s,
        "wall_from_spawn_s": round(finished - spawned, 1), "fill_events_per_s": round(fill_rate, 1),
        "baseline_copy": base, "cpu": cpu,
        "baseline_minimal": minimal,
        "ratio_to_minimal": round(rate / minimal["events_per_s"], 3) if minimal["events_per_s"] else None,
        "method": "rate between the first committed offset and lag 0 (excludes process start and group join)",
        **prof.result(),
    }
