"""The dispatcher role: status changes in, signed partner webhooks out, retries outside the partition.

Two loops per process:

* the **intake** consumes ``qlara.status-changes``, turns each change into one delivery row per webhook
  (deterministic ``webhook-id``, exact body bytes) and commits offsets once those rows are committed:
  Kafka is never held up by a partner, however slow;
* the **delivery loop** leases due deliveries from Postgres (``FOR UPDATE SKIP LOCKED``, any number of
  dispatcher processes) and runs each attempt as its own task, within a per-endpoint concurrency cap and
  a per-endpoint circuit breaker, so a hanging or failing partner only ever occupies its own slots.

A dispatcher killed mid-attempt leaves a leased row; when the lease expires another dispatcher
attempts it again with the same ``webhook-id`` (at-least-once, deduplicable by the partner).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.dispatcher import payloads
from qlara_events.dispatcher.policy import BreakerState, CircuitBreaker, Outcome, RetryPolicy
from qlara_events.dispatcher.sender import Sender
from qlara_events.kafka import make_consumer, start_with_retry
from qlara_events.logs import get_logger
from qlara_events.store import webhooks as store

log = get_logger("dispatcher")

#: How often an idle delivery loop looks for retries that became due.
POLL_S = 0.2
#: Transient database errors: the loops back off and go on. A restarting server also raises class 57
#: (admin/crash shutdown, "cannot connect now") and, on a connection cut mid-operation, asyncpg's
#: InternalClientError; letting those through killed the dispatcher loop for good (make chaos, postgres).
TRANSIENT = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError, TimeoutError,
             asyncpg.DeadlockDetectedError, asyncpg.OperatorInterventionError, asyncpg.InternalClientError)


def _parse_time(value: str | None) -> dt.datetime:
    if value:
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return dt.datetime.now(dt.UTC)


class Dispatcher:
    """One dispatcher process's intake and delivery loops."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._s = settings
        self._pool = pool
        self._policy = RetryPolicy(settings.webhook_retry_schedule)
        self._sender = Sender(settings)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._pending: list[tuple[store.AttemptRecord, asyncio.Future[str | None]]] = []
        self._pending_added = asyncio.Event()

    # ------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Run both loops until :meth:`stop`; attempts in progress finish first."""
        await self._sender.start()
        try:
            await asyncio.gather(self._intake(), self._deliver(), self._gauges(), self._recorder())
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self._s.webhook_timeout_s + 1)
            await self._sender.stop()

    def stop(self) -> None:
        """Ask both loops to stop."""
        self._stopping.set()
        self._wake.set()

    # ---------------------------------------------------------------------------------------------- intake

    async def _intake(self) -> None:
        s = self._s
        consumer: AIOKafkaConsumer = make_consumer(s, s.topics.status_changes, group_id=s.consumer_group_dispatcher,
                                                   client_id="qlara-dispatcher")
        if not await start_with_retry(consumer.start, self._stopping):
            return
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                records = [r for recs in batch.values() for r in recs]
                if not records:
                    continue
                await self._enqueue([orjson.loads(r.value) for r in records])
                try:
                    await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
                except CommitFailedError as exc:
                    log.warning("commit_failed_rebalanced", error=str(exc))
                self._wake.set()
        finally:
            await consumer.stop()

    async def _enqueue(self, changes: list[dict[str, Any]]) -> None:
        delay = 0.1
        while True:
            try:
                hooks = await store.active_for_accounts(self._pool, sorted({c["accountId"] for c in changes
                                                                            if c.get("accountId")}))
                items = []
                for c in changes:
                    hook = hooks.get(c.get("accountId") or "")
                    if hook is None:
                        continue  # the account has no webhook: nothing to deliver
                    disabled = hook["status"] != "ACTIVE"
                    items.append(store.NewDelivery(
                        delivery_id=payloads.delivery_id(c["id"], hook["webhook_id"]),
                        webhook_id=hook["webhook_id"], account_id=c["accountId"], change_id=c["id"],
                        message_id=c.get("messageId"), event_type=payloads.event_type(c),
                        status_rank=payloads.status_rank(c), body=payloads.body(c),
                        changed_at=_parse_time(c.get("changedAt")),
                        state="dead" if disabled else "scheduled",
                        last_error="webhook disabled when the event occurred" if disabled else None,
                    ))
                await store.enqueue(self._pool, items)
                return
            except TRANSIENT as exc:
                log.warning("enqueue_retry", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -------------------------------------------------------------------------------------------- delivery

    def _breaker(self, webhook_id: str) -> CircuitBreaker:
        b = self._breakers.get(webhook_id)
        if b is None:
            b = self._breakers[webhook_id] = CircuitBreaker(self._s.webhook_breaker_failures,
                                                            self._s.webhook_breaker_cooldown_s)
        return b

    async def _deliver(self) -> None:
        cap = self._s.webhook_concurrency_per_endpoint
        while not self._stopping.is_set():
            room = self._s.webhook_concurrency_total - sum(self._in_flight.values())
            rows: list[asyncpg.Record] = []
            if room > 0:
                now = time.monotonic()
                exclude = [w for w, b in self._breakers.items() if b.state(now) is BreakerState.OPEN]
                free = {w: cap - n for w, n in self._in_flight.items() if n}
                for w, b in self._breakers.items():
                    if b.state(now) is BreakerState.HALF_OPEN:
                        free[w] = 0 if b.probing or self._in_flight[w] else 1
                exclude += [w for w, n in free.items() if n <= 0]  # full: leave their rows to others
                try:
                    rows = await store.claim(self._pool, limit=room, exclude=exclude, free=free, default_free=cap,
                                             lease_s=self._s.webhook_timeout_s + self._s.webhook_lease_margin_s)
                except TRANSIENT as exc:
                    log.warning("claim_failed", error=repr(exc))
            if rows:
                try:
                    ends = await store.endpoints(self._pool, sorted({r["webhook_id"] for r in rows}))
                except TRANSIENT as exc:
                    # The claimed rows stay leased; they are attempted again (same webhook-id) when it expires.
                    log.warning("endpoints_failed", error=repr(exc))
                    await asyncio.sleep(POLL_S)
                    continue
                for row in rows:
                    endpoint = ends.get(row["webhook_id"])
                    if endpoint is None:
                        continue  # deleted meanwhile: its deliveries went with it
                    breaker = self._breaker(row["webhook_id"])
                    if breaker.state(time.monotonic()) is BreakerState.HALF_OPEN:
                        breaker.allow(time.monotonic())
                    self._in_flight[row["webhook_id"]] += 1
                    task = asyncio.create_task(self._attempt(row, endpoint))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                metrics.WEBHOOK_IN_FLIGHT.set(sum(self._in_flight.values()))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except TimeoutError:
                pass

    async def _attempt(self, row: asyncpg.Record, endpoint: asyncpg.Record) -> None:
        webhook_id = row["webhook_id"]
        attempted_at = dt.datetime.now(dt.UTC)
        try:
            if row["status_rank"] is not None and row["acked_rank"] is not None \
                    and row["acked_rank"] >= row["status_rank"]:
                await self._record(row, attempted_at, None, 0, "a higher status was already acknowledged",
                                   Outcome.SUPERSEDED, None)
                return
            secrets = [endpoint["secret"]] + ([endpoint["previous_secret"]] if endpoint["previous_secret"] else [])
            result = await self._sender.attempt(endpoint["callback_url"], secrets, row["delivery_id"],
                                                bytes(row["body"]))
            self._breaker(webhook_id).record(result.ok, time.monotonic())
            metrics.WEBHOOK_BREAKER.labels(webhook_id).set(int(self._breaker(webhook_id).state(time.monotonic())))
            delay: float | None = None
            if result.ok:
                outcome = Outcome.SUCCEEDED
                metrics.WEBHOOK_LATENCY.observe(max((dt.datetime.now(dt.UTC) - row["changed_at"]).total_seconds(), 0))
            elif result.status_code == 410:
                outcome = Outcome.GONE
            else:
                delay = self._policy.next_delay(row["attempts"] - row["schedule_base"], result.status_code,
                                                result.retry_after)
                outcome = Outcome.FAILED if delay is not None else Outcome.DEAD
            await self._record(row, attempted_at, result.status_code, result.latency_ms, result.error, outcome, delay)
        except Exception:  # -- one attempt's bug must not kill the loop; the lease makes it retry
            log.exception("attempt_crashed", delivery_id=row["delivery_id"])
        finally:
            self._in_flight[webhook_id] -= 1
            if self._in_flight[webhook_id] <= 0:
                del self._in_flight[webhook_id]
            metrics.WEBHOOK_IN_FLIGHT.set(sum(self._in_flight.values()))
            self._wake.set()

    async def _record(self, row: asyncpg.Record, attempted_at: dt.datetime, status: int | None, latency_ms: int,
                      error: str | None, outcome: Outcome, delay: float | None) -> None:
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.append((store.AttemptRecord(
            delivery_id=row["delivery_id"], webhook_id=row["webhook_id"], message_id=row["message_id"],
            status_rank=row["status_rank"], attempt=row["attempts"], attempted_at=attempted_at,
            status_code=status, latency_ms=latency_ms, error=error, outcome=outcome.value, next_delay_s=delay,
        ), done))
        self._pending_added.set()
        disabled = await done
        if outcome is not Outcome.SUCCEEDED:
            log.info("webhook_attempt", delivery_id=row["delivery_id"], webhook_id=row["webhook_id"],
                     outcome=outcome.value, status_code=status, error=error, next_attempt_in_s=delay)
        if disabled:
            log.warning("webhook_disabled", webhook_id=row["webhook_id"], reason=disabled)

    async def _recorder(self) -> None:
        """Record finished attempts in group commits: everything that finished while the previous
        transaction ran goes into the next one (one transaction per attempt capped fan-out near 100/s)."""
        while True:
            if not self._pending:
                if self._stopping.is_set() and not self._tasks:
                    return
                self._pending_added.clear()
                try:
                    await asyncio.wait_for(self._pending_added.wait(), POLL_S)
                except TimeoutError:
                    pass
                continue
            batch, self._pending = self._pending[:1000], self._pending[1000:]
            delay = 0.1
            while True:
                try:
                    disabled = await store.record_many(self._pool, [r for r, _ in batch],
                                                       disable_after_s=self._s.webhook_disable_after_s)
                    break
                except TRANSIENT as exc:
                    log.warning("record_retry", error=repr(exc), attempts=len(batch), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                except Exception as exc:  # -- unrecordable: the leases expire and the attempts are made again
                    log.exception("record_failed", attempts=len(batch))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    batch = []
                    break
            for rec, fut in batch:
                if not fut.done():
                    fut.set_result(disabled.get(rec.webhook_id))

    async def _gauges(self) -> None:
        while not self._stopping.is_set():
            try:
                stats = await store.queue_stats(self._pool)
                metrics.WEBHOOK_RETRY_QUEUE.set(stats["retrying"])
                metrics.WEBHOOK_DEAD.set(stats["dead"])
                metrics.WEBHOOK_DISABLED.set(stats["disabled"])
            except TRANSIENT as exc:
                log.warning("gauges_failed", error=repr(exc))
            try:
                await asyncio.wait_for(self._stopping.wait(), 5.0)
            except TimeoutError:
                pass
