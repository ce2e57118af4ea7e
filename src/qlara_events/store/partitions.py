"""Monthly partitions of the message history (``messages``), kept ready ahead of time.

The months are created by the SQL function of migration 010, so that ``migrate`` and the running
projector share one definition. A month with no partition still accepts rows (they land in
``messages_default``); keeping partitions ready only keeps them out of it.
"""

from __future__ import annotations

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
