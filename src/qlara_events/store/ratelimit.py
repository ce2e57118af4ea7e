"""Per-key rate limiting shared by every api process: sliding one-second and one-minute windows in Postgres.

Fixed windows let a key spend its burst at the end of one window and again at the start of the next (twice the
burst within milliseconds). Here a window's count is estimated over the last W seconds, whatever the clock says:
the previous window's count weighted by how much of it is still inside, plus the current one's (the
approximation Cloudflare describes for its limiter; exact if the previous window's requests were evenly spread).
``rate_hit()`` (migration 014) decides and counts in one round trip under the key's row lock, so concurrent
requests on several processes see one count. Only allowed requests are counted: a client that keeps retrying
does not push its own window further away.

The api counts in memory by default and reconciles these windows in the background (store/ratesync.py, with
its tolerance); :func:`hit` is the exact path, one write per request (``QLARA_RATE_LIMIT_SYNC_MS=0``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Final

import asyncpg

SQL_HIT: Final = "select * from rate_hit($1, $2, $3, $4)"

SQL_PRUNE: Final = "delete from rate_windows where m_start < $1"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one request against its key's limits, with the headers' values."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int


def wait_s(prev: int, count: int, elapsed: float, window: float, limit: int) -> float:
    """Seconds until one more request fits a sliding window of ``limit`` per ``window`` seconds.

    ``elapsed`` is how far the current window is; its estimate is ``prev x (1 - elapsed/window) + count``.
    """
    room = limit - 1 - count
    if prev * (1 - elapsed / window) <= room:
        return 0.0
    if room >= 0 and prev > 0:
        return window * (1 - room / prev) - elapsed  # the previous window's weight shrinks enough
    # The current window alone is full: wait for it to become the previous one and lose enough weight.
    return window - elapsed + window * max(0.0, 1 - (limit - 1) / count)


async def hit(db: asyncpg.Pool, key_id: str, now: float, *, per_minute: int, burst: int) -> Verdict:
    """Count one request of ``key_id`` at ``now`` (Unix seconds) if it is allowed, and judge it."""
    r = await db.fetchrow(SQL_HIT, key_id, now, per_minute, burst)
    assert r is not None
    reset = int(r["m_start"]) + 60
    remaining = max(0, math.floor(per_minute - r["m_estimate"]))
    if r["allowed"]:
        return Verdict(True, per_minute, remaining, reset, 0)
    wait = max(wait_s(r["m_prev"], r["m_count"], now - r["m_start"], 60.0, per_minute),
               wait_s(r["s_prev"], r["s_count"], now - r["s_start"], 1.0, burst))
    return Verdict(False, per_minute, remaining, reset, max(1, math.ceil(wait)))


async def prune(db: asyncpg.Pool, now: float) -> None:
    """Drop keys idle for more than two minutes (their windows no longer weigh on anything)."""
    await db.execute(SQL_PRUNE, int(now) - 180)
