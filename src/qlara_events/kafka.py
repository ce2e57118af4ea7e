"""Kafka producer/consumer factories, topic creation and the wire format of canonical events.

A record on ``qlara.delivery-events`` is the canonical event's JSON (docs/events.md) as its value, the
message identity as its key, and two headers: ``qlara-via`` (the endpoint that accepted it: a provider
name or ``canonical``) and ``qlara-received-at`` (RFC 3339, when the ingress accepted it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from qlara_events.config import Settings
from qlara_events.logs import get_logger

log = get_logger("kafka")

HEADER_VIA = "qlara-via"
HEADER_RECEIVED_AT = "qlara-received-at"


def make_producer(settings: Settings, *, client_id: str = "qlara-events") -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (the durability contract)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=256 * 1024,
        compression_type=None,
        request_timeout_ms=int(max(settings.ingest_produce_timeout_s, 5.0) * 1000),
        retry_backoff_ms=100,
    )


def make_consumer(settings: Settings, *topics: str, group_id: str, client_id: str) -> AIOKafkaConsumer:
    """A consumer that never commits by itself: offsets move only after the work they cover is durable."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.projector_batch_max,
        fetch_max_wait_ms=max(settings.projector_batch_wait_ms, 10),
        # A killed member's partitions wait for its session to expire before another member takes them:
        # 10 s (not Kafka's 45 s) bounds that stall (make chaos measured ~30 s of stall at 30 s).
        session_timeout_ms=10_000,
        # Static membership (KIP-345) when the process has a stable name: a member restarted under the same
        # name takes its partitions back at once, without a rebalance of the others; its stop does not
        # leave the group either, so a rolling restart moves no partition.
        group_instance_id=f"{settings.kafka_instance_id}.{client_id}" if settings.kafka_instance_id else None,
        heartbeat_interval_ms=2_000,
        max_poll_interval_ms=300_000,
    )


async def ensure_topics(settings: Settings, topics: Sequence[str] | None = None, *, wait_s: float = 60.0) -> None:
    """Create the service's topics if missing (idempotent), retrying while the broker starts."""
    wanted = list(topics or settings.topics.all())
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="qlara-admin")
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                # min.insync.replicas=2 only means something with three replicas; the broker default
                # (set by our local cluster scripts) applies otherwise.
                try:
                    await admin.create_topics(
                        [NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in missing]
                    )
                except TopicAlreadyExistsError:
                    pass
                log.info("topics_created", topics=missing)
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("kafka_not_ready", error=str(exc))
            await asyncio.sleep(1.0)
        finally:
            await admin.close()


async def start_with_retry(start: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> bool:
    """Start a Kafka client (its bound ``start``), retrying with backoff while the broker is not up; False
    when ``stopping`` was set meanwhile (the caller then stops instead of running)."""
    delay = 0.5
    while True:
        try:
            await start()
            return True
        except KafkaError as exc:
            if stopping.is_set():
                return False
            log.warning("kafka_connect_failed", error=str(exc), retry_in_s=delay)
            try:
                await asyncio.wait_for(stopping.wait(), delay)
                return False
            except TimeoutError:
                pass
            delay = min(delay * 2, 10.0)


async def delete_topics(bootstrap: str, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (benchmark and test runs clean up with it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="qlara-admin")
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
        return mine
    finally:
        await admin.close()


def received_at_header(now: dt.datetime) -> tuple[str, bytes]:
    """The ``qlara-received-at`` header for a record accepted at ``now``."""
    return HEADER_RECEIVED_AT, now.astimezone(dt.UTC).isoformat().encode()


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """A record header's value as text, or None."""
    for k, v in headers:
        if k == name:
            return v.decode("utf-8", "replace")
    return None
