"""Per-key rate limiting shared by every api process: fixed one-second and one-minute windows in Postgres.

One statement per request increments both windows and returns their counts. The table is UNLOGGED:
losing counters in a crash only forgives a minute of traffic, and it spares the WAL a write per request.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import asyncpg

SQL_HIT: Final = """
insert into rate_counters (key_id, kind, window_start, count)
values ($1, 's', $2, 1), ($1, 'm', $3, 1)
on conflict (key_id, kind, window_start) do update set count = rate_counters.count + 1
returning kind, count
"""

SQL_PRUNE: Final = "delete from rate_counters where window_start < $1"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one request against its key's limits, with the headers' values."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int


async def hit(db: asyncpg.Pool, key_id: str, now: float, *, per_minute: int, burst: int) -> Verdict:
    """Count one request of ``key_id`` at ``now`` (Unix seconds) and judge it."""
    second = int(now)
    minute = second - second % 60
    counts = {r["kind"]: r["count"] for r in await db.fetch(SQL_HIT, key_id, second, minute)}
    per_s, per_m = counts["s"], counts["m"]
    reset = minute + 60
    if per_m > per_minute:
        return Verdict(False, per_minute, 0, reset, max(reset - second, 1))
    if per_s > burst:
        return Verdict(False, per_minute, max(per_minute - per_m, 0), reset, 1)
    return Verdict(True, per_minute, per_minute - per_m, reset, 0)


async def prune(db: asyncpg.Pool, now: float) -> None:
    """Drop windows that ended more than two minutes ago."""
    await db.execute(SQL_PRUNE, int(now) - 180)
