"""Media rows, scoped to one account."""

from __future__ import annotations

from typing import Final, TypeAlias

import asyncpg

from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"
COLUMNS: Final = ("media_id, name, description, folder_id, mime_type, size, width, height, sha256, storage_key,"
                  " created_at")
SORTABLE: Final = {"id": "media_id", "name": "name", "createdAt": "created_at", "size": "size"}


#: Record a file unless the account's media would then exceed ``$11`` bytes; the advisory lock (per account,
#: for the transaction) serialises concurrent uploads of one account, so two cannot both fit in the last space.
SQL_INSERT_WITHIN_QUOTA: Final = f"""
with locked as (select pg_advisory_xact_lock(hashtext('qlara-media-quota:' || $1)))
insert into media (account_id, name, description, folder_id, mime_type, size, width, height, sha256, storage_key)
select $1, $2, $3, $4, $5, $6::bigint, $7, $8, $9, $10 from locked
where (select coalesce(sum(size), 0) from media where account_id = $1) + $6::bigint <= $11::bigint
returning {COLUMNS}
"""


async def used_bytes(db: Db, account_id: str) -> int:
    """Bytes of media the account stores."""
    return int(await db.fetchval("select coalesce(sum(size), 0) from media where account_id = $1", account_id))


async def insert(conn: Conn, account_id: str, *, name: str, description: str | None, folder_id: int | None,
                 mime_type: str, size: int, width: int | None, height: int | None, sha256: str,
                 storage_key: str, quota_bytes: int) -> asyncpg.Record | None:
    """Record an uploaded file; None when it does not fit in the account's ``quota_bytes``."""
    async with conn.transaction():
        return await conn.fetchrow(SQL_INSERT_WITHIN_QUOTA, account_id, name, description, folder_id, mime_type,
                                   size, width, height, sha256, storage_key, quota_bytes)


async def get(db: Db, account_id: str, media_id: int) -> asyncpg.Record | None:
    """One media item of the account."""
    return await db.fetchrow(f"select {COLUMNS} from media where account_id = $1 and media_id = $2",
                             account_id, media_id)


async def page(db: Db, account_id: str, *, sort_column: str, descending: bool, limit: int,
               offset: int) -> list[asyncpg.Record]:
    """A page of the account's media."""
    assert sort_column in SORTABLE.values()
    direction = "desc" if descending else "asc"
    return list(await db.fetch(
        f"select {COLUMNS} from media where account_id = $1 order by {sort_column} {direction}, media_id"
        " limit $2 offset $3", account_id, limit, offset))


async def delete(db: Db, account_id: str, media_id: int) -> str | None:
    """Delete the row; return its storage key (to delete the bytes) or None when not found."""
    key: str | None = await db.fetchval(
        "delete from media where account_id = $1 and media_id = $2 returning storage_key", account_id, media_id)
    return key


async def by_storage_key(db: Db, key: str) -> asyncpg.Record | None:
    """The row behind a blob key (for serving a signed download)."""
    return await db.fetchrow(f"select {COLUMNS} from media where storage_key = $1", key)
