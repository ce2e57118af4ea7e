"""Monthly partitions of the message history (``messages``), kept ready ahead of time.

The months are created by the SQL function of migration 010, so that ``migrate`` and the running
projector share one definition. A month with no partition still accepts rows (they land in
``messages_default``); keeping partitions ready only keeps them out of it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

import asyncpg

from qlara_events.store.db import Conn

#: Months created ahead of now, always.
AHEAD_MONTHS: Final = 3
#: How far back a month is still carved out of the default partition when rows of it arrive late.
BACK_MONTHS: Final = 24


async def ensure(db: asyncpg.Pool | Conn) -> int:
    """Create the missing monthly partitions (last month to AHEAD_MONTHS ahead); return how many."""
    created = await db.fetchval("select qlara_ensure_message_partitions($1, $2)", BACK_MONTHS, AHEAD_MONTHS)
    return int(created or 0)


async def months(db: asyncpg.Pool | Conn) -> list[str]:
    """The partitions of ``messages`` by name, oldest first (``messages_default`` last)."""
    rows = await db.fetch(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'messages'::regclass order by c.relname = 'messages_default', c.relname")
    return [r["relname"] for r in rows]


class CannotDrop(ValueError):
    """The month cannot be dropped (unknown, malformed, or still being written)."""


_MONTH: Final = re.compile(r"^(\d{4})-(\d{2})$")


def _month_start(month: str) -> dt.date:
    m = _MONTH.match(month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise CannotDrop(f"month must look like 2025-01, got {month!r}")
    return dt.date(int(m.group(1)), int(m.group(2)), 1)


async def drop_month(conn: Conn, month: str, *, today: dt.date | None = None) -> dict[str, int]:
    """Delete one month of history at once: its partition, its messages' identities (refs and parts go with
    them by cascade) and their timeline events, in one transaction. Last month and later are refused: a
    receipt can still arrive for them. Returns how many rows of each kind went."""
    start = _month_start(month)
    now = today or dt.datetime.now(dt.UTC).date()
    last_month = (now.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    if start >= last_month:
        raise CannotDrop(f"{month} is too recent: months before {last_month:%Y-%m} can be dropped")
    part = f"messages_{start:%Y_%m}"
    async with conn.transaction():
        if part not in await months(conn):
            raise CannotDrop(f"there is no partition {part}")
        # Detached first: from here on nothing reads or writes the month through `messages`.
        await conn.execute(f"alter table messages detach partition {part}")
        events = await conn.fetchval(
            f"with gone as (delete from message_events e using {part} m where e.message_id = m.message_id"
            " returning 1) select count(*) from gone")
        keys = await conn.fetchval(
            f"with gone as (delete from message_keys k using {part} m where k.message_id = m.message_id"
            " returning 1) select count(*) from gone")
        messages = await conn.fetchval(f"select count(*) from {part}")
        await conn.execute(f"drop table {part}")
    return {"messages": int(messages), "keys": int(keys), "events": int(events)}
