"""Group commits of everything the dispatcher writes: new delivery rows and attempt outcomes.

Whatever was submitted while the previous transaction ran goes into the next one (``store.record_many``:
a handful of bulk statements), so the number of transactions follows the database's speed, not the
number of deliveries. Each submission gets a future that resolves once its rows are committed (with the
reason when that commit disabled its webhook).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import asyncpg

from qlara_events.logs import get_logger
from qlara_events.store import webhooks as store
from qlara_events.transient import TRANSIENT_DB

log = get_logger("dispatcher.recorder")

#: Submissions per transaction at most.
FLUSH_MAX: Final = 2000


class RecordFailed(Exception):
    """The rows could not be written even on their own (logged); the work they describe is not durable."""


class Recorder:
    """One writer task per dispatcher process."""

    def __init__(self, pool: asyncpg.Pool, disable_after_s: int) -> None:
        self._pool = pool
        self._disable_after_s = disable_after_s
        self._pending: list[tuple[store.AttemptRecord | None, store.NewDelivery | None,
                                  asyncio.Future[str | None]]] = []
        self._added = asyncio.Event()
        self._closing = False
        self.flushes = 0

    def submit(self, record: store.AttemptRecord | None = None,
               new: store.NewDelivery | None = None) -> asyncio.Future[str | None]:
        """Queue an attempt's outcome and/or a delivery row; the future resolves when they are committed."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, new, fut))
        self._added.set()
        return fut

    @property
    def backlog(self) -> int:
        """Submissions not yet being written."""
        return len(self._pending)

    def close(self) -> None:
        """Write what is queued, then stop (call once nothing more will be submitted)."""
        self._closing = True
        self._added.set()

    async def run(self) -> None:
        """Flush until closed and drained."""
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._added.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._added.wait(), 1.0)
                continue
            batch, self._pending = self._pending[:FLUSH_MAX], self._pending[FLUSH_MAX:]
            await self._flush(batch)

    async def _flush(self, batch: list[tuple[store.AttemptRecord | None, store.NewDelivery | None,
                                             asyncio.Future[str | None]]]) -> None:
        records = [r for r, _, _ in batch if r is not None]
        new = [n for _, n, _ in batch if n is not None]
        delay = 0.1
        while True:
            try:
                disabled = await store.record_many(self._pool, records, new=new,
                                                   disable_after_s=self._disable_after_s)
                break
            except TRANSIENT_DB as exc:
                log.warning("record_retry", error=repr(exc), rows=len(batch), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # -- one bad row must not stall every delivery: write them one by one
                if len(batch) > 1:
                    log.exception("record_failed_isolating", rows=len(batch))
                    for one in batch:
                        await self._flush([one])
                    return
                log.exception("record_failed", delivery_id=(records[0].delivery_id if records else
                                                            new[0].delivery_id if new else None))
                _, _, fut = batch[0]
                if not fut.done():
                    fut.set_exception(RecordFailed("could not record the delivery"))
                return
        self.flushes += 1
        for rec, row, fut in batch:
            if not fut.done():
                webhook_id = rec.webhook_id if rec is not None else row.webhook_id if row is not None else ""
                fut.set_result(disabled.get(webhook_id))
