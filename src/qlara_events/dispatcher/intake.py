"""The intake: each change read from ``qlara.status-changes`` gets its first attempt straight from the stream.

For every change of a consumed batch the account's webhook comes from the in-memory cache
(``endpoints.py``) and the attempt starts at once if the webhook has a free slot and a closed breaker
(``lanes.py``); else it waits in the webhook's line. Outcomes are written in group commits
(``recorder.py``): a first attempt that succeeds is one inserted delivery row and one attempt row.

Postgres holds only what must wait. A change goes to the durable retry schedule when its attempt failed,
when its webhook's breaker is open, when its attempt is still running ``webhook_spill_after_s`` after it was
read (written as leased, so a crash re-attempts it when the lease expires), or when it waited that long for
a slot of a webhook that is stalled (written as due now; the retry loop takes it when a slot frees). A
webhook that is merely busy keeps its line in memory (up to ``webhook_queue_max_wait_s``), since the retry
schedule costs more per delivery than waiting. So a slow or dead partner never holds the partition: its
changes spill after the deadline while the others flow; the intake stops reading past ``MAX_UNSETTLED``.

A batch's offsets are committed once every change of it is settled (delivered and recorded, or durable in
the retry schedule), batches in order. A dispatcher killed mid-batch is replayed from the last commit:
changes that already have a delivery row are skipped, the others are attempted again under the same
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Final

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.dispatcher import payloads
from qlara_events.dispatcher.endpoints import Endpoint, EndpointCache
from qlara_events.dispatcher.lanes import Lanes
from qlara_events.dispatcher.policy import Outcome, RetryPolicy
from qlara_events.dispatcher.recorder import Recorder
from qlara_events.dispatcher.sender import AttemptResult, Sender
from qlara_events.kafka import make_consumer, start_with_retry
from qlara_events.logs import get_logger
from qlara_events.store import webhooks as store
from qlara_events.transient import TRANSIENT_DB

log = get_logger("dispatcher.intake")

#: Changes read but not yet settled, at most; past it the intake waits before reading more.
MAX_UNSETTLED: Final = 20_000
#: Records of the topic that are not a change at all, kept as the projector keeps its own (``unreadable_records``).
SQL_UNREADABLE: Final = """
insert into unreadable_records (topic, partition, "offset", key, value, error)
select * from unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[])
on conflict do nothing
"""
#: How often unsettled changes are checked against the spill deadline.
SPILL_TICK_S: Final = 0.05


def _parse_time(value: str | None) -> dt.datetime:
    if value:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(slots=True, eq=False)
class Batch:
    """The offsets one ``getmany`` covers, committed once its ``pending`` changes are all settled."""

    offsets: dict[TopicPartition, int]
    pending: int = 0
    read_at: float = 0.0

    @property
    def settled(self) -> bool:
        """Every change of the batch is delivered and recorded, or durable in the retry schedule."""
        return self.pending == 0


@dataclasses.dataclass(slots=True, eq=False)
class Item:
    """One change on its way to one webhook."""

    batch: Batch
    row: store.NewDelivery
    endpoint: Endpoint
    read_at: float
    #: waiting (for a slot) | in_flight | recording (outcome submitted) | spilled | settled
    state: str = "waiting"
    started_at: float = 0.0
    #: Set once a durable row for this item is being written (spilled or leased); an attempt that ends
    #: afterwards records its outcome as an update of that row.
    durable: asyncio.Future[str | None] | None = None


class Intake:
    """Consumes status changes and makes their first attempts."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, cache: EndpointCache, lanes: Lanes[Item],
                 recorder: Recorder, sender: Sender, policy: RetryPolicy, wake_retry: Callable[[], None]) -> None:
        self._s = settings
        self._pool = pool
        self._cache = cache
        self._lanes = lanes
        self._recorder = recorder
        self._sender = sender
        self._policy = policy
        self._wake_retry = wake_retry
        self._stopping = asyncio.Event()
        self._batches: collections.deque[Batch] = collections.deque()
        self._unsettled: dict[int, Item] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._settled_one = asyncio.Event()
        self.committed_batches = 0
        lanes.start = self._start
        lanes.wanted = lambda item: item.state == "waiting"

    def stop(self) -> None:
        """Stop reading; what is unsettled is made durable, then the offsets are committed."""
        self._stopping.set()

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Attempts in progress."""
        return self._tasks

    # ------------------------------------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Consume until :meth:`stop`."""
        s = self._s
        if not await self._cache.wait_loaded():
            return
        consumer: AIOKafkaConsumer = make_consumer(s, s.topics.status_changes, group_id=s.consumer_group_dispatcher,
                                                   client_id="qlara-dispatcher")
        if not await start_with_retry(consumer.start, self._stopping):
            return
        spiller = asyncio.create_task(self._spill_loop(), name="dispatcher-spill")
        try:
            while not self._stopping.is_set():
                await self._commit_settled(consumer)
                if len(self._unsettled) >= MAX_UNSETTLED:
                    self._settled_one.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._settled_one.wait(), 0.1)
                    continue
                try:
                    batch = await consumer.getmany(timeout_ms=50, max_records=1000)
                except KafkaError as exc:
                    log.warning("fetch_failed", error=repr(exc))
                    continue
                records = [r for recs in batch.values() for r in recs]
                if records:
                    b = Batch({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs},
                              read_at=time.monotonic())
                    self._batches.append(b)
                    await self._take(b, records)
            # Stopping: nothing waits for a slot any more, running attempts get leased rows.
            self._spill(time.monotonic(), everything=True)
            await self._drain(consumer)
        finally:
            spiller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spiller
            await consumer.stop()

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        deadline = time.monotonic() + 10.0
        while self._batches and time.monotonic() < deadline:
            await self._commit_settled(consumer)
            if not self._batches:
                break
            self._settled_one.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled_one.wait(), 0.1)
        if self._batches:
            log.warning("stopped_with_unsettled_changes", changes=sum(b.pending for b in self._batches))

    async def _commit_settled(self, consumer: AIOKafkaConsumer) -> None:
        offsets: dict[TopicPartition, int] = {}
        n = 0
        while self._batches and self._batches[0].settled:
            offsets.update(self._batches.popleft().offsets)
            n += 1
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self.committed_batches += n
        except CommitFailedError as exc:
            # A rebalance took the partitions away; their new owner replays from the last commit, and
            # skips the changes that already have delivery rows.
            log.warning("commit_failed_rebalanced", error=str(exc))
        except KafkaError as exc:
            log.warning("commit_failed", error=repr(exc))

    # ------------------------------------------------------------------------------------- a batch arrives

    async def _take(self, batch: Batch, records: list[Any]) -> None:
        await self._cache.settled()  # webhooks notified before these changes were consumed are applied first
        counts: collections.Counter[str] = collections.Counter()
        items: list[Item] = []
        dead: list[store.NewDelivery] = []
        unreadable: list[tuple[Any, str]] = []
        for rec in records:
            try:
                change = orjson.loads(rec.value)
                if not isinstance(change, dict):
                    raise ValueError("not an object")
                endpoint = self._cache.get(change.get("accountId"))
                if endpoint is None:
                    counts["no_webhook"] += 1
                    continue
                row = self._row(change, endpoint)
            except (ValueError, KeyError, TypeError) as exc:
                # Only the projector writes this topic; a record it cannot have written is kept, not retried
                # (it would stop the partition for good) and not dropped.
                log.error("unreadable_change", topic=rec.topic, partition=rec.partition, offset=rec.offset,
                          error=repr(exc))
                unreadable.append((rec, f"{type(exc).__name__}: {exc}"[:1000]))
                counts["unreadable"] += 1
                continue
            if not endpoint.active:
                dead.append(dataclasses.replace(row, state="dead",
                                                last_error="webhook disabled when the event occurred"))
                counts["disabled"] += 1
                continue
            items.append(Item(batch, row, endpoint, batch.read_at))
        if unreadable:
            await self._keep_unreadable(unreadable)
        known = await self._known(items)
        fresh: list[Item] = []
        superseded: list[Item] = []
        for item in items:
            seen, acked = known.get(item.row.delivery_id, (False, None))
            if seen:
                counts["duplicate"] += 1
            elif acked is not None and item.row.status_rank is not None and acked >= item.row.status_rank:
                superseded.append(item)
            else:
                fresh.append(item)
        batch.pending = len(fresh) + len(superseded) + len(dead)
        for row in dead:
            self._settle_on(batch, self._recorder.submit(new=row))
        now = dt.datetime.now(dt.UTC)
        for item in superseded:
            counts["superseded"] += 1
            metrics.WEBHOOK_ATTEMPTS.labels(Outcome.SUPERSEDED.value).inc()
            self._unsettled[id(item)] = item
            item.state = "recording"
            self._settle_item_on(item, self._recorder.submit(
                self._attempt_record(item, now, AttemptResult(None, 0, "a higher status was already acknowledged",
                                                              None), Outcome.SUPERSEDED, None, fresh=True),
                dataclasses.replace(item.row, state="superseded", attempts=1, last_attempt_at=now,
                                    last_error="a higher status was already acknowledged", last_latency_ms=0)))
        mono = time.monotonic()
        for item in fresh:
            self._unsettled[id(item)] = item
            wid = item.endpoint.webhook_id
            if self._lanes.is_open(wid, mono):
                counts["spilled_breaker"] += 1
                self._make_durable(item, mono)
            elif self._lanes.waiting(wid) == 0 and self._lanes.try_acquire(wid, mono):
                counts["direct"] += 1
                self._start(item)
            else:
                counts["queued"] += 1
                self._lanes.wait(wid, item)
        if batch.pending == 0:
            self._settled_one.set()
        for path, n in counts.items():
            metrics.WEBHOOK_INTAKE.labels(path).inc(n)

    def _row(self, change: dict[str, Any], endpoint: Endpoint) -> store.NewDelivery:
        return store.NewDelivery(
            delivery_id=payloads.delivery_id(change["id"], endpoint.webhook_id),
            webhook_id=endpoint.webhook_id, account_id=change["accountId"], change_id=change["id"],
            message_id=change.get("messageId"), event_type=payloads.event_type(change),
            status_rank=payloads.status_rank(change), body=payloads.body(change),
            changed_at=_parse_time(change.get("changedAt")),
        )

    async def _keep_unreadable(self, bad: list[tuple[Any, str]]) -> None:
        delay = 0.1
        while True:
            try:
                await self._pool.execute(SQL_UNREADABLE, [r.topic for r, _ in bad], [r.partition for r, _ in bad],
                                         [r.offset for r, _ in bad], [r.key for r, _ in bad],
                                         [r.value for r, _ in bad], [e for _, e in bad])
                return
            except TRANSIENT_DB as exc:
                log.warning("unreadable_store_retry", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _known(self, items: list[Item]) -> dict[str, tuple[bool, int | None]]:
        delay = 0.1
        while True:
            try:
                return await store.known(self._pool, [(i.row.delivery_id, i.row.webhook_id, i.row.message_id)
                                                      for i in items])
            except TRANSIENT_DB as exc:
                log.warning("known_retry", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------------------------------ settling

    def _settle_on(self, batch: Batch, fut: asyncio.Future[str | None]) -> None:
        def done(_f: asyncio.Future[str | None]) -> None:
            batch.pending -= 1
            self._settled_one.set()

        fut.add_done_callback(done)

    def _settle_item_on(self, item: Item, fut: asyncio.Future[str | None]) -> None:
        """Settle ``item`` once ``fut`` (its final rows) is written; a failed write was logged by the recorder."""
        self._watch_disabled(item.endpoint.webhook_id, fut)
        fut.add_done_callback(lambda _f: self._settle(item))

    def _settle(self, item: Item) -> None:
        if item.state == "settled":
            return
        item.state = "settled"
        self._unsettled.pop(id(item), None)
        item.batch.pending -= 1
        self._settled_one.set()

    def _watch_disabled(self, webhook_id: str, fut: asyncio.Future[str | None]) -> None:
        """When the write of an outcome disabled the webhook (410, failing too long), stop attempting it."""
        def done(f: asyncio.Future[str | None]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                log.warning("webhook_disabled", webhook_id=webhook_id, reason=f.result())
                self._cache.mark_disabled(webhook_id)

        fut.add_done_callback(done)

    # ------------------------------------------------------------------------------------------ spilling

    async def _spill_loop(self) -> None:
        while True:
            await asyncio.sleep(SPILL_TICK_S)
            self._spill(time.monotonic())

    def _spill(self, now: float, *, everything: bool = False) -> None:
        """Write to the retry schedule what must not wait in memory any longer.

        A running attempt past the spill deadline gets a leased row (its partition moves on). A change waiting
        for a slot spills past the deadline when its webhook is stalled (attempts in flight, none ended for the
        deadline: a hanging or very slow partner) or its breaker opened; a webhook that is only busy (every
        slot taken, answers coming in) keeps its line in memory up to ``webhook_queue_max_wait_s``, because
        the retry schedule costs several writes per delivery and would slow a burst down, not speed it up.
        """
        soon = now - self._s.webhook_spill_after_s
        late = now - self._s.webhook_queue_max_wait_s
        counts: collections.Counter[str] = collections.Counter()
        for item in self._unsettled.values():  # in the order read (the loop does not change the dict)
            if not everything and item.read_at > soon:
                break
            if item.durable is not None or item.state not in ("waiting", "in_flight"):
                continue
            wid = item.endpoint.webhook_id
            if everything:
                reason = "spilled_stopping"
            elif item.state == "in_flight":
                if item.started_at > soon:
                    continue  # it waited in a busy line, and its attempt has only just begun
                reason = "spilled_slow"
            elif (self._lanes.stalled(wid, now, self._s.webhook_spill_after_s) or self._lanes.is_open(wid, now)
                  or item.read_at <= late):
                reason = "spilled_waiting"
            else:
                continue
            counts[reason] += 1
            self._make_durable(item, now)
        for path, n in counts.items():
            metrics.WEBHOOK_INTAKE.labels(path).inc(n)

    def _make_durable(self, item: Item, now: float) -> None:
        """Write the item's row to the retry schedule: due now if no attempt runs, leased if one does."""
        if item.state == "in_flight":
            lease = self._s.webhook_timeout_s + self._s.webhook_lease_margin_s - (now - item.started_at)
            row = dataclasses.replace(item.row, state="in_flight", attempts=1, lease_s=max(lease, 1.0))
        else:
            item.state = "spilled"
            row = dataclasses.replace(item.row, state="scheduled", attempts=0, next_delay_s=0.0)
        item.durable = self._recorder.submit(new=row)

        def done(_f: asyncio.Future[str | None]) -> None:
            self._settle(item)  # a failed write was logged by the recorder
            self._wake_retry()

        item.durable.add_done_callback(done)

    # ------------------------------------------------------------------------------------------ attempts

    def _start(self, item: Item) -> None:
        """Called with a slot taken: run the attempt."""
        item.state = "in_flight"
        item.started_at = time.monotonic()
        task = asyncio.create_task(self._attempt(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, item: Item) -> None:
        wid = item.endpoint.webhook_id
        attempted_at = dt.datetime.now(dt.UTC)
        try:
            result = await self._sender.attempt(item.endpoint.url, item.endpoint.keys(attempted_at),
                                                item.row.delivery_id, item.row.body)
        except asyncio.CancelledError:
            self._lanes.release(wid, time.monotonic())
            raise
        except Exception as exc:  # -- an attempt's bug must not lose the change: it is retried
            log.exception("attempt_crashed", delivery_id=item.row.delivery_id)
            result = AttemptResult(None, 0, f"internal error: {type(exc).__name__}", None)
        # The slot is free as soon as the answer is in; writing the outcome does not hold it.
        mono = time.monotonic()
        breaker = self._lanes.breaker(wid)
        breaker.record(result.ok, mono)
        self._lanes.release(wid, mono)
        metrics.WEBHOOK_BREAKER.labels(wid).set(int(breaker.state(mono)))
        delay: float | None = None
        if result.ok:
            outcome = Outcome.SUCCEEDED
            metrics.WEBHOOK_LATENCY.observe(max((dt.datetime.now(dt.UTC) - item.row.changed_at).total_seconds(), 0))
        elif result.status_code == 410:
            outcome = Outcome.GONE
        else:
            delay = self._policy.next_delay(1, result.status_code, result.retry_after)
            outcome = Outcome.FAILED if delay is not None else Outcome.DEAD
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
        if outcome is not Outcome.SUCCEEDED:
            log.info("webhook_attempt", delivery_id=item.row.delivery_id, webhook_id=wid, outcome=outcome.value,
                     status_code=result.status_code, error=result.error, next_attempt_in_s=delay)
        if item.durable is None:
            item.state = "recording"
            # Never submitted before (no durable row was written): filled in place, not copied.
            row = item.row
            row.state = {Outcome.SUCCEEDED: "succeeded", Outcome.FAILED: "scheduled"}.get(outcome, "dead")
            row.attempts, row.next_delay_s, row.last_attempt_at = 1, delay, attempted_at
            row.last_status_code, row.last_error, row.last_latency_ms = (result.status_code, result.error,
                                                                         result.latency_ms)
            self._settle_item_on(item, self._recorder.submit(
                self._attempt_record(item, attempted_at, result, outcome, delay, fresh=True), row))
        else:
            # Its leased row is (being) written: the outcome updates it, as the retry loop's would.
            with contextlib.suppress(Exception):
                await item.durable
            self._watch_disabled(wid, self._recorder.submit(
                self._attempt_record(item, attempted_at, result, outcome, delay, fresh=False)))

    def _attempt_record(self, item: Item, at: dt.datetime, result: AttemptResult, outcome: Outcome,
                        delay: float | None, *, fresh: bool) -> store.AttemptRecord:
        return store.AttemptRecord(
            delivery_id=item.row.delivery_id, webhook_id=item.endpoint.webhook_id, message_id=item.row.message_id,
            status_rank=item.row.status_rank, attempt=1, attempted_at=at, status_code=result.status_code,
            latency_ms=result.latency_ms, error=result.error, outcome=outcome.value, next_delay_s=delay,
            fresh=fresh,
        )
