"""The dispatcher role: status changes in, signed partner webhooks out; Postgres only for what must wait.

One process runs:

* the **intake** (``intake.py``): consumes ``qlara.status-changes`` and makes each change's first attempt
  straight from the stream, with the webhook from the in-memory cache (``endpoints.py``);
* the **retry loop** (here): leases due deliveries from Postgres (``FOR UPDATE SKIP LOCKED``, any number
  of dispatcher processes): retries of failed attempts, changes the intake spilled, manual retries and
  recovers, and leases a dead dispatcher left behind;
* the **recorder** (``recorder.py``): group commits of every outcome of both.

Both paths share each webhook's slots and circuit breaker (``lanes.py``), so a hanging or failing
partner only ever occupies its own slots. A dispatcher killed mid-attempt leaves a leased row or an
uncommitted offset; either way the change is attempted again with the same ``webhook-id``
(at-least-once, deduplicable by the partner).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import asyncpg

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.dispatcher import endpoints
from qlara_events.dispatcher.endpoints import Endpoint, EndpointCache
from qlara_events.dispatcher.intake import Intake, Item
from qlara_events.dispatcher.lanes import Lanes
from qlara_events.dispatcher.policy import BreakerState, Outcome, RetryPolicy
from qlara_events.dispatcher.recorder import Recorder
from qlara_events.dispatcher.sender import AttemptResult, Sender
from qlara_events.logs import get_logger
from qlara_events.store import webhooks as store
from qlara_events.transient import TRANSIENT_DB

log = get_logger("dispatcher")

#: How often an idle retry loop looks for retries that became due.
POLL_S = 0.2


class Dispatcher:
    """One dispatcher process's intake, retry loop and recorder."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        s = self._s = settings
        self._pool = pool
        self._policy = RetryPolicy(s.webhook_retry_schedule)
        self._sender = Sender(s)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cache = EndpointCache(s.database_url)
        self.lanes: Lanes[Item] = Lanes(s.webhook_concurrency_per_endpoint, s.webhook_concurrency_total,
                                        s.webhook_breaker_failures, s.webhook_breaker_cooldown_s)
        self.recorder = Recorder(pool, s.webhook_disable_after_s)
        self.intake = Intake(s, pool, self.cache, self.lanes, self.recorder, self._sender, self._policy,
                             self._wake.set)

    # ------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Run until :meth:`stop`: the intake makes what it holds durable, attempts in progress finish,
        every outcome is written, then the process stops."""
        await self._sender.start()
        recorder = asyncio.create_task(self.recorder.run(), name="dispatcher-recorder")
        cache = asyncio.create_task(self.cache.run(), name="dispatcher-endpoints")
        try:
            await asyncio.gather(self.intake.run(), self._retry_loop(), self._gauges())
        finally:
            running = self._tasks | self.intake.tasks
            if running:
                await asyncio.wait(running, timeout=self._s.webhook_timeout_s + 1)
            self.recorder.close()
            with contextlib.suppress(Exception):  # -- its errors were logged; the process is stopping
                await asyncio.wait_for(recorder, 30)
            self.cache.stop()
            await cache
            await self._sender.stop()

    def stop(self) -> None:
        """Ask every loop to stop."""
        self._stopping.set()
        self.intake.stop()
        self._wake.set()

    # ------------------------------------------------------------------------------------------ retry loop

    async def _retry_loop(self) -> None:
        if not await self.cache.wait_loaded():
            return
        while not self._stopping.is_set():
            room = self.lanes.total - self.lanes.total_in_flight
            rows: list[asyncpg.Record] = []
            if room > 0:
                exclude, free = self.lanes.claimable(time.monotonic())
                try:
                    rows = await store.claim(self._pool, limit=room, exclude=exclude, free=free,
                                             default_free=self.lanes.per_endpoint,
                                             lease_s=self._s.webhook_timeout_s + self._s.webhook_lease_margin_s)
                except TRANSIENT_DB as exc:
                    log.warning("claim_failed", error=repr(exc))
            if rows:
                ends = await self._endpoints(sorted({r["webhook_id"] for r in rows}))
                if ends is None:
                    await asyncio.sleep(POLL_S)
                    continue
                now = time.monotonic()
                for row in rows:
                    endpoint = ends.get(row["webhook_id"])
                    if endpoint is None:
                        continue  # deleted meanwhile: its deliveries went with it
                    breaker = self.lanes.breaker(row["webhook_id"])
                    if breaker.state(now) is BreakerState.HALF_OPEN:
                        breaker.allow(now)
                    self.lanes.take(row["webhook_id"], now)
                    task = asyncio.create_task(self._attempt(row, endpoint))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                metrics.WEBHOOK_IN_FLIGHT.set(self.lanes.total_in_flight)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def _endpoints(self, webhook_ids: list[str]) -> dict[str, Endpoint] | None:
        """From the cache; a webhook it does not know yet (created a moment ago) is read from Postgres."""
        ends = self.cache.by_webhook(webhook_ids)
        missing = [w for w in webhook_ids if w not in ends]
        if missing:
            try:
                ends.update(await endpoints.fetch(self._pool, missing))
            except TRANSIENT_DB as exc:
                # The claimed rows stay leased; they are attempted again (same webhook-id) when it expires.
                log.warning("endpoints_failed", error=repr(exc))
                return None
        return ends

    async def _attempt(self, row: asyncpg.Record, endpoint: Endpoint) -> None:
        webhook_id = row["webhook_id"]
        attempted_at = dt.datetime.now(dt.UTC)
        result: AttemptResult | None = None
        try:
            if row["status_rank"] is not None and row["acked_rank"] is not None \
                    and row["acked_rank"] >= row["status_rank"]:
                outcome, delay = Outcome.SUPERSEDED, None
                result = AttemptResult(None, 0, "a higher status was already acknowledged", None)
            else:
                result = await self._sender.attempt(endpoint.url, endpoint.keys(attempted_at), row["delivery_id"],
                                                    bytes(row["body"]))
                self.lanes.breaker(webhook_id).record(result.ok, time.monotonic())
                delay = None
                if result.ok:
                    outcome = Outcome.SUCCEEDED
                    metrics.WEBHOOK_LATENCY.observe(
                        max((dt.datetime.now(dt.UTC) - row["changed_at"]).total_seconds(), 0))
                elif result.status_code == 410:
                    outcome = Outcome.GONE
                else:
                    delay = self._policy.next_delay(row["attempts"] - row["schedule_base"], result.status_code,
                                                    result.retry_after)
                    outcome = Outcome.FAILED if delay is not None else Outcome.DEAD
        except Exception:  # -- one attempt's bug must not kill the loop; the lease makes it retry
            log.exception("attempt_crashed", delivery_id=row["delivery_id"])
            return
        finally:
            # The slot is free as soon as the answer is in; writing the outcome does not hold it.
            now = time.monotonic()
            self.lanes.release(webhook_id, now)
            metrics.WEBHOOK_IN_FLIGHT.set(self.lanes.total_in_flight)
            metrics.WEBHOOK_BREAKER.labels(webhook_id).set(int(self.lanes.breaker(webhook_id).state(now)))
            self._wake.set()
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.value).inc()
        if outcome is not Outcome.SUCCEEDED:
            log.info("webhook_attempt", delivery_id=row["delivery_id"], webhook_id=webhook_id,
                     outcome=outcome.value, status_code=result.status_code, error=result.error,
                     next_attempt_in_s=delay)
        fut = self.recorder.submit(store.AttemptRecord(
            delivery_id=row["delivery_id"], webhook_id=webhook_id, message_id=row["message_id"],
            status_rank=row["status_rank"], attempt=row["attempts"], attempted_at=attempted_at,
            status_code=result.status_code, latency_ms=result.latency_ms, error=result.error,
            outcome=outcome.value, next_delay_s=delay,
        ))
        with contextlib.suppress(Exception):  # -- unrecordable: logged; the lease expires and it is retried
            disabled = await fut
            if disabled:
                log.warning("webhook_disabled", webhook_id=webhook_id, reason=disabled)
                self.cache.mark_disabled(webhook_id)

    async def _gauges(self) -> None:
        while not self._stopping.is_set():
            try:
                stats = await store.queue_stats(self._pool)
                metrics.WEBHOOK_RETRY_QUEUE.set(stats["retrying"])
                metrics.WEBHOOK_DEAD.set(stats["dead"])
                metrics.WEBHOOK_DISABLED.set(stats["disabled"])
            except TRANSIENT_DB as exc:
                log.warning("gauges_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 5.0)
