"""Contact import jobs: a durable queue with leases (see store.leases), one row per asynchronous upload."""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import asyncpg

from qlara_events.store import leases
from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"
COLUMNS: Final = ("import_id, account_id, file_name, params, storage_key, status, attempts, lease_until, result,"
                  " error, created_at, started_at, completed_at")

SQL_CREATE_CAPPED: Final = leases.create_capped("contact_imports", ("file_name", "params", "storage_key"), COLUMNS)
SQL_CLAIM: Final = leases.claim("contact_imports", "import_id", COLUMNS)
#: A job that killed its worker ``MAX_ATTEMPTS`` times: FAILED with the error body a 500 would carry.
SQL_GIVE_UP: Final = leases.give_up(
    "contact_imports",
    """'{"status": 500, "error": "Internal Server Error", "message": "the import worker stopped repeatedly"}'"""
    "::jsonb", "storage_key")


async def create(conn: Conn, account_id: str, file_name: str, params: dict[str, Any], storage_key: str,
                 max_pending: int) -> asyncpg.Record | None:
    """Queue a job; None when the account already has ``max_pending`` imports queued or running."""
    async with conn.transaction():
        return await conn.fetchrow(SQL_CREATE_CAPPED, account_id, max_pending, file_name, params, storage_key)


async def get(db: Db, account_id: str, import_id: int) -> asyncpg.Record | None:
    """One job of the account (another account's is None)."""
    return await db.fetchrow(f"select {COLUMNS} from contact_imports where account_id = $1 and import_id = $2",
                             account_id, import_id)


async def claim(db: Db, lease_s: float, max_attempts: int) -> tuple[asyncpg.Record | None, list[str]]:
    """Lease the next job to this worker, after failing the ones that exhausted their attempts; also returns
    the files of the jobs given up (to delete)."""
    given_up = await db.fetch(SQL_GIVE_UP, max_attempts)
    return await db.fetchrow(SQL_CLAIM, lease_s, max_attempts), [r["storage_key"] for r in given_up]


async def renew(db: Db, import_id: int, attempt: int, lease_s: float) -> bool:
    """Extend the lease of a running job; False when it is no longer this worker's (lease lost, or ended)."""
    return await db.fetchval(
        "update contact_imports set lease_until = now() + make_interval(secs => $3)"
        " where import_id = $1 and attempts = $2 and status = 'PENDING' returning true",
        import_id, attempt, lease_s) is not None


async def finish(db: Db, import_id: int, attempt: int, *, result: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> bool:
    """COMPLETED with ``result``, or FAILED with ``error``, if the job is still this worker's attempt.

    Run in the import's own transaction: the contacts and the result commit together or not at all.
    """
    status = "COMPLETED" if error is None else "FAILED"
    return await db.fetchval(
        "update contact_imports set status = $3, result = $4, error = $5, lease_until = null, completed_at = now()"
        " where import_id = $1 and attempts = $2 and status = 'PENDING' returning true",
        import_id, attempt, status, result, error) is not None


async def purge(db: Db, retention_s: int) -> list[str]:
    """Delete the jobs that ended more than ``retention_s`` ago; return their files' keys (to delete)."""
    rows = await db.fetch("delete from contact_imports where status <> 'PENDING'"
                          " and completed_at < now() - make_interval(secs => $1) returning storage_key",
                          float(retention_s))
    return [r["storage_key"] for r in rows]
