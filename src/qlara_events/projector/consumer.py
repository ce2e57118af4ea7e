"""The projector loop: read a batch, apply it in one transaction, then commit its offsets.

Offsets are committed only after the transaction that applied the batch committed, and every write is
idempotent, so a crash anywhere replays at most two batches and changes nothing twice. Transient database
errors (deadlock between two projectors, a restarting Postgres) retry the same batch with backoff; the
loop never skips a record.

The loop is a three-stage pipeline, each stage in order: while batch N is in Postgres, batch N+1 is fetched
and decoded, and batch N-1's offsets are committed and its transitions produced from memory (see
projector/outbox.py). Batch N+1's offsets are committed only after batch N's were, and after N+1's own
transaction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.domain.events import parse_event, to_json
from qlara_events.errors import InvalidEvent
from qlara_events.kafka import HEADER_RECEIVED_AT, HEADER_VIA, make_consumer, make_producer, start_with_retry
from qlara_events.logs import get_logger
from qlara_events.projector import outbox
from qlara_events.store.projection import BatchResult, Incoming, apply_batch

log = get_logger("projector")

SQL_UNREADABLE = """
insert into unreadable_records (topic, partition, "offset", key, value, error)
select * from unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[])
on conflict do nothing
"""

#: Errors worth retrying the same batch for: the database is restarting, or two projectors deadlocked.
TRANSIENT = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.PostgresConnectionError,  # cannot connect now, connection does not exist, ...
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # admin/crash shutdown, cannot connect now: a restarting server
    asyncpg.InternalClientError,  # a connection cut in the middle of an operation
    OSError,
    TimeoutError,
)


#: aiokafka is untyped; a record has topic, partition, offset, key, value, headers, timestamp.
Record: TypeAlias = ConsumerRecord


def decode(records: Sequence[Record]) -> tuple[list[tuple[Record, Incoming]], list[tuple[Record, str]]]:
    """Parse records into events; unreadable ones come back separately with the reason."""
    good: list[tuple[Record, Incoming]] = []
    bad: list[tuple[Record, str]] = []
    for rec in records:
        via: bytes | None = None
        raw_at: bytes | None = None
        for k, v in rec.headers or ():
            if k == HEADER_RECEIVED_AT:
                raw_at = raw_at if raw_at is not None else v
            elif k == HEADER_VIA:
                via = via if via is not None else v
        try:
            event = parse_event(orjson.loads(rec.value or b""))
            received_at = dt.datetime.fromisoformat(raw_at.decode("utf-8", "replace")) if raw_at else \
                dt.datetime.fromtimestamp(rec.timestamp / 1000, dt.UTC)
        except (orjson.JSONDecodeError, InvalidEvent, ValueError) as exc:
            bad.append((rec, str(exc)))
            continue
        good.append((rec, Incoming(event, via.decode("utf-8", "replace") if via else "unknown", received_at,
                                   to_json(event))))
    return good, bad


Batch: TypeAlias = dict[TopicPartition, list[Record]]
#: A fetched batch: records by partition, all records, the decoded events, the unreadable records.
Fetched: TypeAlias = tuple[Batch, list[Record], list[tuple[Record, Incoming]], list[tuple[Record, str]]]


class Projector:
    """One projector consumer; run several processes to scale up to the topic's partition count."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        #: Change ids produced from memory and acknowledged, whose outbox rows the next batch deletes.
        self._relayed: list[str] = []
        self.batches = 0

    async def run(self) -> None:
        """Consume until :meth:`stop` is called; the batch in hand is finished and committed first."""
        s = self._settings
        self._consumer = make_consumer(s, s.topics.delivery_events, group_id=s.consumer_group_projector,
                                       client_id="qlara-projector")
        self._producer = make_producer(s, client_id="qlara-projector")
        if not await start_with_retry(self._producer.start, self._stopping):
            return
        if not await start_with_retry(self._consumer.start, self._stopping):
            await self._producer.stop()
            return
        last_leftovers = 0.0
        fetching: asyncio.Task[Fetched] = asyncio.create_task(self._fetch())
        #: Offsets commit and in-memory relay of the batch applied before the one in hand.
        after: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                batch, records, pairs, bad = await fetching
                if self._stopping.is_set():
                    break  # not applied, not committed: whoever consumes next reads it again
                fetching = asyncio.create_task(self._fetch())
                if records:
                    result = await self._apply(records, pairs, bad)
                    if after is not None:
                        await after
                    after = asyncio.create_task(self._after(batch, result))
                    every = 5.0
                else:
                    if after is not None:
                        await after
                        after = None
                    await self._forget()
                    every = 1.0
                if time.monotonic() - last_leftovers > every:
                    # Leftovers of a projector that stopped between commit and acknowledgement.
                    await self._relay_leftovers()
                    last_leftovers = time.monotonic()
        finally:
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await fetching
            if after is not None:
                # Its error, if any, was raised in the loop already (or is not this shutdown's business).
                await asyncio.wait([after])
                if not after.cancelled() and after.exception() is not None:
                    log.warning("projector_after_batch_failed", error=repr(after.exception()))
            await self._forget()
            await self._consumer.stop()
            await self._producer.stop()

    def stop(self) -> None:
        """Ask the loop to stop after the current batch."""
        self._stopping.set()

    async def _fetch(self) -> Fetched:
        assert self._consumer is not None
        batch = await self._consumer.getmany(timeout_ms=200, max_records=self._settings.projector_batch_max)
        records = [r for recs in batch.values() for r in recs]
        pairs, bad = decode(records)
        return batch, records, pairs, bad

    async def _apply(self, records: list[Record], pairs: list[tuple[Record, Incoming]],
                     bad: list[tuple[Record, str]]) -> BatchResult:
        good = [inc for _, inc in pairs]
        structlog.contextvars.bind_contextvars(batch_first_event=good[0].event.id if good else None)
        relayed, self._relayed = self._relayed, []
        delay = 0.1
        started = time.perf_counter()
        while True:
            try:
                async with self._pool.acquire() as conn:
                    result = await apply_batch(conn, good, status_topic=self._settings.topics.status_changes,
                                               relayed=relayed)
                break
            except TRANSIENT as exc:
                metrics.PROJECTOR_RETRIES.labels(type(exc).__name__).inc()
                log.warning("batch_retry", error=repr(exc), events=len(good), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # -- a poison event: isolate it instead of stalling the partition forever
                log.exception("batch_failed_isolating", events=len(good))
                self._relayed[:0] = relayed  # not deleted: the next batch does it
                result, poisoned = await self._isolate(pairs)
                bad = bad + poisoned
                break
        if bad:
            await self._store_unreadable(bad)
        self.batches += 1
        metrics.PROJECTOR_BATCH_SIZE.observe(len(records))
        metrics.PROJECTOR_BATCH_DURATION.observe(time.perf_counter() - started)
        for (typ, effect), n in result.effects.items():
            metrics.PROJECTOR_EVENTS.labels(typ, effect).inc(n)
        moved: collections.Counter[tuple[str, str]] = collections.Counter(
            (t["status"], t["channel"]) for t in result.transitions if t.get("kind") != "inbound")
        for (status, channel), n in moved.items():
            metrics.TRANSITIONS.labels(status, channel).inc(n)
        if bad:
            log.error("unreadable_records", count=len(bad), first_error=bad[0][1])
        structlog.contextvars.unbind_contextvars("batch_first_event")
        return result

    async def _isolate(self, pairs: list[tuple[Record, Incoming]]) -> tuple[BatchResult, list[tuple[Record, str]]]:
        """Apply events one by one; those that still fail are returned to be kept as unreadable."""
        total = BatchResult()
        poisoned: list[tuple[Record, str]] = []
        for rec, inc in pairs:
            while True:
                try:
                    async with self._pool.acquire() as conn:
                        one = await apply_batch(conn, [inc], status_topic=self._settings.topics.status_changes)
                    total.effects.update(one.effects)
                    total.transitions += one.transitions
                    break
                except TRANSIENT as exc:
                    log.warning("isolate_retry", error=repr(exc))
                    await asyncio.sleep(0.5)
                except Exception as exc:  # -- this event cannot be applied: keep it, move on
                    metrics.PROJECTOR_EVENTS.labels(inc.event.type, "poison").inc()
                    poisoned.append((rec, f"{type(exc).__name__}: {exc}"[:1000]))
                    break
        return total, poisoned

    async def _store_unreadable(self, bad: list[tuple[Record, str]]) -> None:
        while True:
            try:
                await self._pool.execute(SQL_UNREADABLE, *_unreadable_columns(bad))
                return
            except TRANSIENT as exc:
                log.warning("unreadable_store_retry", error=repr(exc))
                await asyncio.sleep(0.5)

    async def _after(self, batch: Batch, result: BatchResult) -> None:
        """After the batch's transaction: commit its offsets and produce its transitions, both acknowledged."""
        await asyncio.gather(self._commit(batch), self._relay_now(result.transitions))
        self._update_lag(batch)

    async def _commit(self, batch: Batch) -> None:
        assert self._consumer is not None
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # A rebalance took the partitions away; their new owner replays the batch, harmlessly.
            log.warning("commit_failed_rebalanced", error=str(exc))

    async def _relay_now(self, transitions: list[dict[str, Any]]) -> None:
        """Produce the transitions the batch just committed to the outbox; on failure their rows stay there
        and the leftovers relay produces them."""
        assert self._producer is not None
        if not transitions:
            return
        try:
            self._relayed += await outbox.produce(self._producer, self._settings.topics.status_changes,
                                                  transitions)
        except KafkaError as exc:
            log.warning("outbox_relay_deferred", error=repr(exc), transitions=len(transitions))

    async def _relay_leftovers(self) -> None:
        assert self._producer is not None
        try:
            await outbox.relay(self._pool, self._producer)
        except (*TRANSIENT, KafkaError, outbox.RelayFailed) as exc:
            # The rows stay in the outbox; the next attempt (here or in another projector) relays them.
            log.warning("outbox_relay_retry", error=repr(exc))

    async def _forget(self) -> None:
        """Delete the outbox rows of acknowledged transitions when no batch transaction is coming to do it."""
        if not self._relayed:
            return
        relayed, self._relayed = self._relayed, []
        try:
            await outbox.forget(self._pool, relayed)
        except TRANSIENT as exc:
            self._relayed[:0] = relayed
            log.warning("outbox_forget_deferred", error=repr(exc))

    def _update_lag(self, batch: Batch) -> None:
        assert self._consumer is not None
        for tp, recs in batch.items():
            high = self._consumer.highwater(tp)
            if high is not None and recs:
                metrics.CONSUMER_LAG.labels(self._settings.consumer_group_projector, tp.topic,
                                            str(tp.partition)).set(max(high - recs[-1].offset - 1, 0))


def _unreadable_columns(bad: list[tuple[Record, str]]) -> list[list[object]]:
    return [
        [r.topic for r, _ in bad], [r.partition for r, _ in bad], [r.offset for r, _ in bad],
        [r.key for r, _ in bad], [r.value for r, _ in bad], [e for _, e in bad],
    ]
