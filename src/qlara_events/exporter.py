"""The export worker (runs with the api role): claims export jobs and streams their CSV with COPY.

Rows flow from Postgres ``COPY ... TO STDOUT`` through a small bounded queue into the blob store, so memory
stays flat whatever the export's size. Jobs are leased: if this process dies, the lease expires and any
api process resumes the job; after ``MAX_ATTEMPTS`` tries it is marked FAILED with the reason, never left
PENDING forever. Completed files expire after ``QLARA_EXPORT_TTL`` and are deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg

from qlara_events.config import Settings
from qlara_events.jobs import Worker, claim_loop
from qlara_events.logs import get_logger
from qlara_events.storage import BlobStore, new_key
from qlara_events.store import exports as store

log = get_logger("exporter")

MAX_ATTEMPTS: Final = 3
LEASE_S: Final = 600.0
POLL_S: Final = 0.5
QUEUE_CHUNKS: Final = 8


def _query(kind: str, account_id: str, params: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    if kind == "MESSAGE_HISTORY":
        return store.SQL_HISTORY_CSV, store.history_args(account_id, params)
    if kind == "DELIVERY_REPORTS":
        return store.SQL_DELIVERY_REPORTS_CSV, store.reports_args(account_id, params)
    if kind == "CONTACTS":
        return store.SQL_CONTACTS_CSV, store.contacts_args(account_id, params)
    raise ValueError(f"export kind {kind} is not supported by this server")


class Exporter(Worker):
    """Runs export jobs one at a time per process (each is one long COPY)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, blobs: BlobStore) -> None:
        super().__init__()
        self._s = settings
        self._pool = pool
        self._blobs = blobs

    async def run(self) -> None:
        """Process jobs until :meth:`stop`."""
        await claim_loop(self._stopping, self.wake, self._claim, self._run, poll_s=POLL_S, log=log, what="export")

    async def _claim(self) -> asyncpg.Record | None:
        for key in await store.expire(self._pool):
            await self._blobs.delete(key)
        return await store.claim(self._pool, LEASE_S, MAX_ATTEMPTS)

    async def _run(self, job: asyncpg.Record) -> None:
        export_id = job["export_id"]
        try:
            sql, args = _query(job["kind"], job["account_id"], job["params"])
        except (ValueError, KeyError) as exc:
            await store.fail(self._pool, export_id, str(exc))
            return
        key = new_key("x")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)
        rows = 0

        async def produce() -> None:
            nonlocal rows
            try:
                async with self._pool.acquire() as conn:
                    status = await conn.copy_from_query(sql, *args, output=queue.put, format="csv", header=True)
                rows = int(status.split()[-1]) if status else 0
            finally:
                await queue.put(None)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        producer = asyncio.create_task(produce())
        try:
            size = await self._blobs.write(key, chunks())
            await producer
        except Exception as exc:  # -- any failure ends in FAILED with its reason, never a silent PENDING
            producer.cancel()
            await self._blobs.delete(key)
            log.warning("export_failed", export_id=export_id, error=repr(exc))
            await store.fail(self._pool, export_id, f"{type(exc).__name__}: {exc}")
            return
        await store.complete(self._pool, export_id, key, rows, size, self._s.export_ttl_s)
        log.info("export_completed", export_id=export_id, rows=rows, bytes=size)
