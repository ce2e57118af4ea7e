"""The projector loop: read a batch, apply it in transactions, then commit its offsets.

Offsets are committed only after the transactions that applied the batch committed (at most every
``COMMIT_EVERY_S`` under load, at once when idle), and every write is idempotent, so a crash anywhere replays
what was applied since the last commit and changes nothing twice. Transient database
errors (deadlock between two transactions, a restarting Postgres) retry the same transaction with backoff;
the loop never skips a record.

A batch is split into lanes by Kafka key (``QLARA_PROJECTOR_LANES``), as the topic is split into partitions:
a message's submission and receipts share a key, so they stay in order in one lane, and each lane is a
transaction on a connection of its own. A lane's transaction for batch N+1 starts once its transaction for
batch N committed, so while one lane waits on Postgres the others work, on both cores. Two lanes that meet
on one message (a receipt keyed by our message id) serialise on its advisory locks in Postgres, which detects
any deadlock between them, as between two projector processes. A batch under two lanes' worth is one
transaction that waits for every lane.

Batches form a pipeline: while batch N is in Postgres, batch N+1 is fetched, decoded and may start in the
lanes N has finished, and batch N-1's offsets are committed and its transitions produced from memory (see
projector/outbox.py). At most two batches are in flight, and the next is taken from the consumer only when
the older one has finished, so under load a batch holds everything that arrived meanwhile; a batch's offsets
are committed only after its own transactions and after the batch before it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import secrets
import time
import zlib
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


#: Seconds between offset commits under load: one OffsetCommit (a write to __consumer_offsets) per batch was
#: 13 % of the projector's samples at 1,000 events/s.
COMMIT_EVERY_S = 0.2

#: Fewest events worth a lane (a transaction and a connection) of their own.
MIN_LANE = 100

#: A lane's outcome: what its transaction did, and the events it could not apply (kept as unreadable).
LaneResult: TypeAlias = "tuple[BatchResult, list[tuple[Record, str]]]"

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
        #: What this process marks its outbox rows with (a restarted projector relays its predecessor's at once).
        self._writer = outbox.writer_token(settings.kafka_instance_id, secrets.token_hex(6))
        #: Offsets of applied batches not committed yet, and when the last commit was sent.
        self._offsets: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
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
        #: The newest batch in flight (its lanes, then its offsets and relay) and the one before it.
        settling: asyncio.Task[None] | None = None
        older: asyncio.Task[None] | None = None
        #: The last transaction started in each lane: a lane's next batch starts when it has committed.
        tails: list[asyncio.Task[LaneResult] | None] = []
        try:
            while not self._stopping.is_set():
                if older is not None:
                    # At most two batches in flight; raises what went wrong with it. The next batch is taken
                    # only now, so under load it holds everything that arrived meanwhile: fewer, larger
                    # batches, each paying its round trips once (aiokafka keeps fetching in the background).
                    await older
                    older = None
                batch, records, pairs, bad = await self._fetch()
                if self._stopping.is_set():
                    break  # not applied, not committed: whoever consumes next reads it again
                if records:
                    lanes, tails = self._start_lanes(pairs, tails)
                    older, settling = settling, asyncio.create_task(
                        self._settle(batch, records, lanes, bad, settling))
                    every = 5.0
                else:
                    if settling is not None:
                        await settling  # it awaits the one before it
                        older = settling = None
                    await self._flush_offsets()
                    await self._forget()
                    every = 1.0
                if time.monotonic() - last_leftovers > every:
                    # Leftovers of a projector that stopped between commit and acknowledgement.
                    await self._relay_leftovers()
                    last_leftovers = time.monotonic()
        finally:
            # The batches in flight finish and commit; an error, if any, was raised in the loop already (or is
            # not this shutdown's business).
            for task in {t for t in (*tails, older, settling) if t is not None}:
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    log.warning("projector_batch_failed_at_stop", error=repr(task.exception()))
            with contextlib.suppress(KafkaError):
                await self._flush_offsets()
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

    def _start_lanes(self, pairs: list[tuple[Record, Incoming]], tails: list[asyncio.Task[LaneResult] | None]
                     ) -> tuple[list[asyncio.Task[LaneResult]], list[asyncio.Task[LaneResult] | None]]:
        """Start the batch's transactions, one per lane, each after the same lane's previous one; returns them
        and the lanes' new tails. A batch too small to split is one transaction that waits for every lane."""
        n = self._settings.projector_lanes
        relayed, self._relayed = self._relayed, []  # their outbox rows go with the batch's first transaction
        if n <= 1 or len(pairs) < 2 * MIN_LANE:
            one = asyncio.create_task(self._lane([t for t in tails if t is not None], pairs, relayed))
            return [one], [one] * n
        started: list[asyncio.Task[LaneResult]] = []
        new_tails: list[asyncio.Task[LaneResult] | None] = []
        for i, lane in enumerate(_lanes(pairs, n)):
            before = tails[i] if tails else None
            if lane:
                task = asyncio.create_task(self._lane([before] if before else [], lane, () if started else relayed))
                started.append(task)
                before = task
            new_tails.append(before)
        return started, new_tails

    async def _lane(self, before: list[asyncio.Task[LaneResult]], pairs: list[tuple[Record, Incoming]],
                    relayed: Sequence[str]) -> LaneResult:
        """One lane's share of a batch, once the lane's earlier transactions have committed."""
        # A task of its own: this binding is its logs' alone.
        structlog.contextvars.bind_contextvars(batch_first_event=pairs[0][1].event.id if pairs else None)
        if before:
            await asyncio.wait(before)
            if any(t.cancelled() or t.exception() is not None for t in before):
                self._relayed[:0] = relayed
                raise RuntimeError("an earlier transaction of this lane failed; its batch is replayed")
        return await self._apply_lane(pairs, relayed)

    async def _settle(self, batch: Batch, records: list[Record], lanes: list[asyncio.Task[LaneResult]],
                      bad: list[tuple[Record, str]], previous: asyncio.Task[None] | None) -> None:
        """Once the batch's transactions committed: keep its unreadable records, count it, then (after the
        batch before it) commit its offsets and produce its transitions."""
        started = time.perf_counter()
        result = BatchResult()
        for part, poisoned in await asyncio.gather(*lanes):
            result.effects.update(part.effects)
            result.transitions += part.transitions
            bad = bad + poisoned
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
        if previous is not None:
            await previous
        await self._after(batch, result)

    async def _apply_lane(self, pairs: list[tuple[Record, Incoming]], relayed: Sequence[str]) -> LaneResult:
        """One lane's transaction, retried while the database is unavailable; a poison event is isolated."""
        good = [inc for _, inc in pairs]
        delay = 0.1
        while True:
            try:
                async with self._pool.acquire() as conn:
                    return await apply_batch(conn, good, status_topic=self._settings.topics.status_changes,
                                             relayed=relayed, writer=self._writer), []
            except TRANSIENT as exc:
                metrics.PROJECTOR_RETRIES.labels(type(exc).__name__).inc()
                log.warning("batch_retry", error=repr(exc), events=len(good), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # -- a poison event: isolate it instead of stalling the partition forever
                log.exception("batch_failed_isolating", events=len(good))
                self._relayed[:0] = relayed  # not deleted: the next batch does it
                return await self._isolate(pairs)

    async def _isolate(self, pairs: list[tuple[Record, Incoming]]) -> tuple[BatchResult, list[tuple[Record, str]]]:
        """Apply events one by one; those that still fail are returned to be kept as unreadable."""
        total = BatchResult()
        poisoned: list[tuple[Record, str]] = []
        for rec, inc in pairs:
            while True:
                try:
                    async with self._pool.acquire() as conn:
                        one = await apply_batch(conn, [inc], status_topic=self._settings.topics.status_changes,
                                                writer=self._writer)
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
        """Take the batch's offsets into the next commit, which is sent at most every ``COMMIT_EVERY_S`` (and
        when the loop is idle or stops): a replay after a crash covers that much more, and changes nothing."""
        self._offsets.update({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
        if time.monotonic() - self._committed_at >= COMMIT_EVERY_S:
            await self._flush_offsets()

    async def _flush_offsets(self) -> None:
        assert self._consumer is not None
        if not self._offsets:
            return
        offsets, self._offsets = self._offsets, {}
        self._committed_at = time.monotonic()
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
            await outbox.relay(self._pool, self._producer, writer=self._writer)
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


def _lanes(pairs: list[tuple[Record, Incoming]], n: int) -> list[list[tuple[Record, Incoming]]]:
    """The batch's events in ``n`` lanes by Kafka key, as partitions split the topic: a submission and its
    receipts share the provider identity as key (domain/events.py), so a message's events keep their order in
    one lane, batch after batch. (A batch usually comes from one partition: fetches are per partition.)"""
    lanes: list[list[tuple[Record, Incoming]]] = [[] for _ in range(n)]
    for pair in pairs:
        lanes[zlib.crc32(pair[0].key or b"") % n].append(pair)
    return lanes
