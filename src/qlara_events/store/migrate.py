"""Numbered SQL migrations (``migrations/NNN_name.sql``), applied once each, in order, idempotently.

A transaction-level advisory lock makes concurrent ``migrate`` runs (several processes starting at once)
apply each migration exactly once.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

from qlara_events.store import partitions
from qlara_events.store.db import Conn

_LOCK_KEY: Final = 0x71_6C_61_72_61  # "qlara"
_NAME: Final = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with the package, in order."""
    out = []
    for f in resources.files("qlara_events.store").joinpath("migrations").iterdir():
        m = _NAME.match(f.name)
        if m:
            out.append((int(m.group(1)), f.name, f.read_text(encoding="utf-8")))
    return sorted(out)


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            "create table if not exists schema_migrations ("
            " version int primary key, name text not null, applied_at timestamptz not null default now())"
        )
        done = {r["version"] for r in await conn.fetch("select version from schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("insert into schema_migrations (version, name) values ($1, $2)", version, name)
            applied.append(name)
        # The months ahead (migration 010), so a fresh install writes into partitions from its first message.
        await partitions.ensure(conn)
    return applied
