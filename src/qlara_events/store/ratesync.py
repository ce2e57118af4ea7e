"""Per-key rate limits decided in each api process's memory and reconciled through Postgres in the background.

The windows and their estimate are store/ratelimit.py's (sliding one-second and one-minute windows, only
allowed requests counted): what changes is where the count lives. Each process keeps, per key, the shared
windows as it last read them from ``rate_windows`` plus the requests it allowed since, and decides on their
sum without waiting for Postgres. Every ``interval_s`` (``QLARA_RATE_LIMIT_SYNC_MS``) one call of
``rate_sync()`` (migration 017) adds this process's new counts to the shared windows and reads back the
windows of every key it served in the last ``TRACK_S``, all keys in one round trip, on a connection of its
own (api/app.py), so it never queues behind requests; a process never waits on a write. A key with no recent
shared windows here (first seen, or idle, or the sync failing) gets them from the lookup that resolves the key
(store/accounts.py ``authenticate_with_windows``), one read as before.

Tolerance: a process does not see what the others allowed since they last synced and it last read, at most
two sync intervals (plus a round trip) of their traffic. So across N processes a key may exceed its limits by
at most what the other N - 1 processes allow it in two sync intervals, and never by more than (N - 1) x its
burst within one second (each process on its own still stops at the burst). With one process the limits are
exact. Counts are kept through a failed sync and sent with the next one (one whose answer was lost after it
committed counts them twice: the error is on the strict side).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Final

import asyncpg

from qlara_events.logs import get_logger
from qlara_events.metrics import RATE_LIMIT_SYNCS
from qlara_events.store.ratelimit import Verdict, wait_s

log = get_logger("store.ratesync")

SQL_SYNC: Final = "select * from rate_sync($1::text[], $2::bigint[], $3::int[], $4::text[])"
#: A key this process has not served for this long is no longer read back (nor kept in memory).
TRACK_S: Final = 60.0
WINDOW_COLUMNS: Final = ("s_start", "s_prev", "s_count", "m_start", "m_prev", "m_count")


class _Key:
    """What one process knows of one key's windows."""

    __slots__ = ("inflight", "pending", "read_at", "shared", "used")

    def __init__(self) -> None:
        #: The shared windows (s_start, s_prev, s_count, m_start, m_prev, m_count) as last read, and when that
        #: read began (wall clock); None: never read.
        self.shared: tuple[int, int, int, int, int, int] | None = None
        self.read_at = -math.inf
        #: Requests this process allowed, by Unix second, not yet sent / sent with the sync in flight.
        self.pending: dict[int, int] = {}
        self.inflight: dict[int, int] = {}
        self.used = -math.inf


def _windows(row: asyncpg.Record | None) -> tuple[int, int, int, int, int, int]:
    if row is None or row["s_start"] is None:
        return (0, 0, 0, 0, 0, 0)  # no row: nothing counted in any window that still weighs
    return tuple(int(row[c]) for c in WINDOW_COLUMNS)  # type: ignore[return-value]


def _shift(start: int, prev: int, count: int, now_start: int, width: int) -> tuple[int, int]:
    """(previous, current) counts of the window starting at ``now_start``, from a window read at ``start``."""
    if start == now_start:
        return prev, count
    if start == now_start - width:
        return count, 0
    return 0, 0


class LocalLimiter:
    """Sliding-window limits per key, counted here and reconciled with every other process's counts."""

    def __init__(self, pool: asyncpg.Pool, interval_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._interval = interval_s
        #: Shared windows read longer ago than this are not trusted (the sync is failing, or the key was idle).
        self._stale_s = max(1.0, 10 * interval_s)
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._stopping = asyncio.Event()
        self.syncs = 0

    def fresh(self, key_id: str, now: float) -> bool:
        """Whether this process read the key's shared windows recently enough to decide on them."""
        k = self._keys.get(key_id)
        return k is not None and now - k.read_at <= self._stale_s

    def load(self, key_id: str, row: asyncpg.Record | None, read_at: float) -> None:
        """The key's shared windows as a lookup begun at ``read_at`` read them (``row``: rate_windows columns,
        None or nulls when the key has none). Ignored when a sync is in flight for the key or read later."""
        k = self._keys.setdefault(key_id, _Key())
        if k.inflight or read_at <= k.read_at:
            return
        k.shared = _windows(row)
        k.read_at = read_at

    def hit(self, key_id: str, now: float, *, per_minute: int, burst: int) -> Verdict:
        """Count one request of ``key_id`` at ``now`` (Unix seconds) if it is allowed, and judge it."""
        k = self._keys.get(key_id)
        if k is None:
            k = self._keys[key_id] = _Key()
        k.used = now
        sec = math.floor(now)
        mnt = math.floor(now / 60) * 60
        w = k.shared
        if w is not None:
            # A process whose clock lags another's counts in the newest window (as rate_hit() does).
            sec, mnt = max(sec, w[0]), max(mnt, w[3])
            s_prev, s_count = _shift(w[0], w[1], w[2], sec, 1)
            m_prev, m_count = _shift(w[3], w[4], w[5], mnt, 60)
        else:
            s_prev = s_count = m_prev = m_count = 0
        for counts in (k.pending, k.inflight):
            for second, n in counts.items():
                if second == sec:
                    s_count += n
                elif second == sec - 1:
                    s_prev += n
                minute = second // 60 * 60
                if minute == mnt:
                    m_count += n
                elif minute == mnt - 60:
                    m_prev += n
        s_estimate = s_prev * max(0.0, 1 - (now - sec)) + s_count
        m_estimate = m_prev * max(0.0, 1 - (now - mnt) / 60) + m_count
        reset = mnt + 60
        if s_estimate + 1 <= burst and m_estimate + 1 <= per_minute:
            k.pending[sec] = k.pending.get(sec, 0) + 1
            return Verdict(True, per_minute, max(0, math.floor(per_minute - m_estimate - 1)), reset, 0)
        wait = max(wait_s(m_prev, m_count, now - mnt, 60.0, per_minute),
                   wait_s(s_prev, s_count, now - sec, 1.0, burst))
        return Verdict(False, per_minute, max(0, math.floor(per_minute - m_estimate)), reset,
                       max(1, math.ceil(wait)))

    async def sync(self) -> int:
        """Send every count not yet sent and read back the windows of the keys served lately; how many keys."""
        now = self._clock()
        keys: list[str] = []
        secs: list[int] = []
        counts: list[int] = []
        read: list[str] = []
        for key_id, k in list(self._keys.items()):
            if not k.pending and not k.inflight and now - k.used > TRACK_S:
                del self._keys[key_id]
                continue
            if k.inflight:  # -- a previous sync that never answered: its counts go again with this one
                for second, n in k.inflight.items():
                    k.pending[second] = k.pending.get(second, 0) + n
            k.inflight, k.pending = k.pending, {}
            for second, n in k.inflight.items():
                keys.append(key_id)
                secs.append(second)
                counts.append(n)
            read.append(key_id)
        if not read:
            return 0
        try:
            rows = await self._pool.fetch(SQL_SYNC, keys, secs, counts, read)
        except BaseException:
            for key_id in read:
                k = self._keys[key_id]
                for second, n in k.inflight.items():
                    k.pending[second] = k.pending.get(second, 0) + n
                k.inflight = {}
            raise
        by_key = {r["key_id"]: r for r in rows}
        for key_id in read:
            k = self._keys[key_id]
            k.shared = _windows(by_key.get(key_id))
            k.read_at = now
            k.inflight = {}
        self.syncs += 1
        return len(read)

    def stop(self) -> None:
        """End :meth:`run` after one last sync."""
        self._stopping.set()

    async def run(self) -> None:
        """Sync every interval until :meth:`stop`, then once more so no count is lost."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            try:
                await self.sync()
                RATE_LIMIT_SYNCS.labels("ok").inc()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                RATE_LIMIT_SYNCS.labels("failed").inc()
                log.warning("rate_limit_sync_failed", error=repr(exc))
