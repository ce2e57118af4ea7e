"""Contact imports: the run the synchronous upload and the import jobs share, and the import worker (api role).

``POST /contacts/upload`` answers with the report once the import is done. With ``Prefer: respond-async`` the
file waits in the blob store instead, a job row is queued (leased like an export: store.leases), and a worker
runs the same import on the imports' own pool, writes the report and deletes the file. The contacts and the
job's result commit in one transaction: a worker that dies mid-import leaves nothing behind, its lease expires
and another worker runs the job again from the start, and no job is applied twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import asyncpg

from qlara_events.config import Settings
from qlara_events.contacts import readers, vcard
from qlara_events.contacts.importer import Import
from qlara_events.contacts.rows import Columns, ImportRow
from qlara_events.errors import BadRequest, ImportsBusy, NotFound, Overloaded, PayloadTooLarge, QlaraError
from qlara_events.jobs import Worker, claim_loop
from qlara_events.logs import get_logger
from qlara_events.storage import BlobStore
from qlara_events.store import contacts as store
from qlara_events.store import imports as jobs
from qlara_events.store.db import Conn, create_pool

log = get_logger("imports")

#: Upsert batch size: one bulk statement per this many rows.
BATCH: Final = 1000
VCARD: Final = "VCARD"
VCARD_COLUMNS: Final = Columns({"phoneNumber": 0, "email": 1, "firstName": 2, "lastName": 3, "fullName": 4})
#: Seconds a refused import is told to wait: imports last seconds to minutes.
IMPORT_RETRY_AFTER: Final = 10
#: A job whose worker died this many times is FAILED, not retried forever.
MAX_ATTEMPTS: Final = 3
POLL_S: Final = 0.5
#: The key under which the worker's imports are counted in ImportSlots (never an account id: those are uuids).
WORKER: Final = "(import worker)"

#: Called inside the import's transaction with the report, before it commits.
Finish = Callable[[Conn, dict[str, Any]], Awaitable[None]]


class ImportSlots:
    """The imports this process runs: a Postgres pool of their own, and who holds its connections.

    An import holds its connection (one transaction) for as long as it parses, minutes for a large file; on
    the API's pool, a few imports would leave every other request of every account waiting. Here they can only
    take the ``size`` connections of their own pool; one more is refused at once (503) rather than queued
    with its upload in a temporary file, and one account may hold ``per_account`` of them (429). The import
    worker takes a slot too (under :data:`WORKER`), and only claims a job when one is free.
    """

    def __init__(self, size: int, per_account: int) -> None:
        self.size = size
        self.per_account = per_account
        self.running: collections.Counter[str] = collections.Counter()
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The imports' pool (``size`` connections), open while the application runs."""
        assert self._pool is not None, "the import pool opens with the application"
        return self._pool

    @property
    def free(self) -> bool:
        """Whether one more import may start now."""
        return sum(self.running.values()) < self.size

    async def open(self, settings: Settings) -> None:
        """Open the pool (no connection until the first import)."""
        self._pool = await create_pool(settings, min_size=0, max_size=self.size)

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()

    def acquire(self, holder: str) -> None:
        """Take a slot for ``holder`` (an account id, or :data:`WORKER`), or refuse at once."""
        if holder != WORKER and self.running[holder] >= self.per_account:
            raise ImportsBusy(f"this account already runs {self.per_account} import(s) here; retry once it has "
                              "finished", retry_after=IMPORT_RETRY_AFTER)
        if not self.free:
            raise Overloaded(f"{self.size} imports are already running; retry later",
                             retry_after=IMPORT_RETRY_AFTER)
        self.running[holder] += 1

    def release(self, holder: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        self.running[holder] -= 1
        if not self.running[holder]:
            del self.running[holder]

    @contextlib.contextmanager
    def slot(self, holder: str) -> Iterator[None]:
        """Hold one of the slots for ``holder`` over the block, or refuse at once."""
        self.acquire(holder)
        try:
            yield
        finally:
            self.release(holder)


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """What to import, as the request's form fields gave it (validated), and as a job stores it."""

    file_name: str
    #: readers' CSV / XLSX / XLS, or :data:`VCARD`.
    fmt: str
    #: removeHead: True, False, or None (a header when the first row names a phone or email column).
    header: bool | None
    #: Parsed rows echoed in the report.
    preview: int
    list_id: int | None

    def params(self) -> dict[str, Any]:
        """The job's stored parameters."""
        return {"format": self.fmt, "header": self.header, "preview": self.preview, "listId": self.list_id}

    @classmethod
    def from_job(cls, job: asyncpg.Record) -> ImportSpec:
        """The spec of a queued job."""
        p = job["params"]
        return cls(job["file_name"], p["format"], p["header"], p["preview"], p["listId"])

    def reader(self, path: Path, limits: readers.Limits) -> Import:
        """An import run over the file at ``path``."""
        if self.fmt == VCARD:
            return Import(_vcard_rows(path), header=False, columns=VCARD_COLUMNS, preview=self.preview,
                          max_rows=limits.max_rows)
        return Import(readers.rows(path, self.fmt, self.file_name, limits), header=self.header,
                      preview=self.preview, max_rows=limits.max_rows)


def _vcard_rows(path: Path) -> Iterator[list[str]]:
    encoding = readers.detect_encoding(path)
    with path.open("r", encoding=encoding, errors="replace") as f:
        for card in vcard.cards(f):
            cells = vcard.to_cells(card)
            yield [cells.get(c, "") for c in ("phoneNumber", "email", "firstName", "lastName", "fullName")]


async def run_import(pool: asyncpg.Pool, account_id: str, spec: ImportSpec, path: Path, limits: readers.Limits,
                     *, finish: Finish | None = None) -> dict[str, Any]:
    """Import the file at ``path`` in one transaction on ``pool``; return the report (the 200 body).

    Raises BadRequest (corrupt, unsupported or empty file) or PayloadTooLarge (past a limit), nothing kept.
    ``finish`` runs in the transaction with the report, so whatever it writes commits with the contacts.
    """
    imp = spec.reader(path, limits)
    batches: Iterator[list[ImportRow]] = imp.batches(BATCH)
    created = updated = 0

    def parse_next() -> list[ImportRow] | None:
        return next(batches, None)

    # Parsing (CPU: CSV, libphonenumber) runs in a thread and overlaps the previous batch's statement; the
    # whole import is one transaction, so a file found corrupt half-way leaves nothing behind.
    pending = asyncio.ensure_future(asyncio.to_thread(parse_next))
    try:
        async with pool.acquire() as conn, conn.transaction():
            while (batch := await pending) is not None:
                pending = asyncio.ensure_future(asyncio.to_thread(parse_next))
                ids, new = await store.upsert(conn, account_id, batch)
                created += new
                updated += len(ids) - new
                if spec.list_id is not None:
                    await store.add_imported(conn, spec.list_id, ids)
            if imp.total == 0 and not imp.has_header:
                raise BadRequest("unsupported or corrupt file: it has no rows")
            report = _report(spec, imp, created, updated)
            if finish is not None:
                await finish(conn, report)
    except (readers.UnreadableFile, vcard.VCardError) as exc:
        raise BadRequest(f"unsupported or corrupt file: {exc}") from None
    except readers.LimitExceeded as exc:  # nothing is kept: the transaction rolls back
        raise PayloadTooLarge(f"file refused: {exc}") from None
    finally:
        # Never leave the thread reading a file that is about to be deleted.
        with contextlib.suppress(Exception):
            await pending
    return report


def _report(spec: ImportSpec, imp: Import, created: int, updated: int) -> dict[str, Any]:
    index = imp.columns.index if imp.columns else {}
    return {
        "message": "File parsed successfully", "fileName": spec.file_name, "format": spec.fmt,
        "mode": "CREATE_UPDATE", "listId": spec.list_id, "header": imp.has_header,
        "mappedColumns": sorted(index, key=index.__getitem__),
        "ignoredColumns": list(imp.columns.ignored) if imp.columns else [],
        "summary": {"total": imp.total, "created": created, "updated": updated, "errors": imp.error_count,
                    "skipped": imp.skipped},
        "errors": [{"row": e.row, "reason": e.reason} for e in imp.errors],
        "errorsTruncated": imp.error_count > len(imp.errors),
        "preview": imp.preview,
    }


class LeaseLost(Exception):
    """Another worker took the job over (this one's lease expired): its transaction must not commit."""


def _internal(message: str) -> dict[str, Any]:
    """The body of a 500 (QlaraError's own status)."""
    return QlaraError(message).body()


class ImportWorker(Worker):
    """Claims import jobs (``settings.import_workers`` at once per process) and runs them on the import slots."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, slots: ImportSlots, blobs: BlobStore,
                 limits: readers.Limits) -> None:
        super().__init__()
        self.max_pending = settings.import_max_pending_per_account
        self._s = settings
        self._pool = pool
        self._slots = slots
        self._blobs = blobs
        self._limits = limits

    async def run(self) -> None:
        """Process jobs until :meth:`stop`."""
        await asyncio.gather(*(claim_loop(self._stopping, self.wake, self._claim, self._run, poll_s=POLL_S,
                                          log=log, what="import") for _ in range(self._s.import_workers)))

    async def _delete(self, keys: list[str]) -> None:
        for key in keys:
            await self._blobs.delete(key)

    async def _claim(self) -> asyncpg.Record | None:
        await self._delete(await jobs.purge(self._pool, self._s.import_job_retention_s))
        if not self._slots.free:  # synchronous imports hold every connection: claim when one is free
            return None
        self._slots.acquire(WORKER)
        try:
            job, given_up = await jobs.claim(self._pool, self._s.import_lease_s, MAX_ATTEMPTS)
        except BaseException:
            self._slots.release(WORKER)
            raise
        await self._delete(given_up)
        if job is None:
            self._slots.release(WORKER)
        return job

    async def _run(self, job: asyncpg.Record) -> None:
        try:
            keeper = asyncio.create_task(self._keep_lease(job))
            try:
                ended = await self._execute(job)
            finally:
                keeper.cancel()
            if ended:
                await self._blobs.delete(job["storage_key"])
        finally:
            self._slots.release(WORKER)

    async def _keep_lease(self, job: asyncpg.Record) -> None:
        """Renew the lease while the import runs, so only a dead worker's job is taken over."""
        while True:
            await asyncio.sleep(self._s.import_lease_s / 3)
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                if not await jobs.renew(self._pool, job["import_id"], job["attempts"], self._s.import_lease_s):
                    return

    async def _execute(self, job: asyncpg.Record) -> bool:
        """Run the job; True when it ended (COMPLETED or FAILED), False when it is left to its lease."""
        import_id, attempt, account_id = job["import_id"], job["attempts"], job["account_id"]

        async def finish(conn: Conn, report: dict[str, Any]) -> None:
            if not await jobs.finish(conn, import_id, attempt, result=report):
                raise LeaseLost

        try:
            spec = ImportSpec.from_job(job)
            if spec.list_id is not None and not await store.list_exists(self._pool, account_id, spec.list_id):
                raise NotFound("no such contact list in this account (listId): it was deleted after the upload")
            report = await run_import(self._slots.pool, account_id, spec, self._blobs.path(job["storage_key"]),
                                      self._limits, finish=finish)
        except LeaseLost:
            log.warning("import_lease_lost", import_id=import_id)
            return False
        except QlaraError as exc:
            return await jobs.finish(self._pool, import_id, attempt, error=exc.body())
        except FileNotFoundError:
            log.error("import_file_missing", import_id=import_id, key=job["storage_key"])
            return await jobs.finish(self._pool, import_id, attempt, error=_internal(
                "the uploaded file is missing from the storage (is QLARA_STORAGE_DIR shared by every replica?)"))
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            # The lease expires and a worker (this one or another) runs the job again.
            log.warning("import_interrupted", import_id=import_id, error=repr(exc))
            return False
        except Exception as exc:  # -- any other failure ends FAILED (details in the log), never a silent PENDING
            log.exception("import_failed", import_id=import_id, error=repr(exc))
            return await jobs.finish(self._pool, import_id, attempt, error=_internal("the import failed"))
        log.info("import_completed", import_id=import_id, **report["summary"])
        return True
