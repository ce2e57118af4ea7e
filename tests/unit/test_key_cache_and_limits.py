"""The api's in-memory key cache and rate limiter (issue #17), without a database."""

from __future__ import annotations

from typing import Any

import pytest

from qlara_events.store.accounts import Principal
from qlara_events.store.keycache import KeyCache
from qlara_events.store.ratesync import LocalLimiter

T0 = 1_800_000_000.0  # a whole minute


class FakePool:
    """Answers rate_sync() with the rows given (or raises), and records its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.rows: list[dict[str, Any]] = []
        self.fail: Exception | None = None

    async def fetch(self, _sql: str, *args: Any) -> list[dict[str, Any]]:
        self.calls.append(args)
        if self.fail is not None:
            raise self.fail
        return self.rows


def _limiter(pool: FakePool | None = None) -> LocalLimiter:
    return LocalLimiter(pool or FakePool(), 0.1, clock=lambda: T0 + 0.5)  # type: ignore[arg-type]


def _row(key_id: str, s_start: int, s_prev: int, s_count: int, m_start: int, m_prev: int,
         m_count: int) -> dict[str, Any]:
    return {"key_id": key_id, "s_start": s_start, "s_prev": s_prev, "s_count": s_count, "m_start": m_start,
            "m_prev": m_prev, "m_count": m_count}


class TestLocalDecisions:
    """The sliding windows of store/ratelimit.py, on shared windows plus this process's own counts."""

    def test_burst_then_429_with_retry_after(self) -> None:
        """50 a second: the 51st in the same second is refused, told to wait a whole second at least."""
        lim = _limiter()
        verdicts = [lim.hit("k", T0 + 0.5, per_minute=1000, burst=50) for _ in range(51)]
        assert all(v.allowed for v in verdicts[:50]) and not verdicts[50].allowed
        assert verdicts[50].retry_after >= 1 and verdicts[50].limit == 1000
        assert verdicts[49].remaining == 950 and verdicts[49].reset == int(T0) + 60

    def test_shared_counts_weigh(self) -> None:
        """Windows another process filled count: 40 of 50 this second already spent leaves 10."""
        lim = _limiter()
        lim.load("k", _row("k", int(T0), 0, 40, int(T0), 0, 40), T0)  # type: ignore[arg-type]
        allowed = sum(lim.hit("k", T0 + 0.5, per_minute=1000, burst=50).allowed for _ in range(20))
        assert allowed == 10

    def test_previous_window_slides(self) -> None:
        """A full previous second weighs by how much of it is still inside the last second."""
        lim = _limiter()
        lim.load("k", _row("k", int(T0) - 1, 0, 50, int(T0), 0, 50), T0)  # type: ignore[arg-type]
        # At .75 into this second, a quarter of the previous 50 still weighs: 12.5, so 37 more fit.
        allowed = sum(lim.hit("k", T0 + 0.75, per_minute=1000, burst=50).allowed for _ in range(50))
        assert allowed == 37

    def test_minute_limit(self) -> None:
        """5 a minute: the 6th is refused until the window slides, Remaining reaches 0."""
        lim = _limiter()
        verdicts = [lim.hit("k", T0 + i, per_minute=5, burst=50) for i in range(6)]
        assert [v.allowed for v in verdicts] == [True] * 5 + [False]
        assert verdicts[4].remaining == 0 and verdicts[5].remaining == 0
        assert verdicts[5].retry_after > 50  # the minute's requests all fall in the current window

    def test_stale_lookup_does_not_overwrite_a_later_read(self) -> None:
        """A lookup that began before the last read of the windows does not replace them."""
        lim = _limiter()
        lim.load("k", _row("k", int(T0), 0, 50, int(T0), 0, 50), T0 + 0.2)  # type: ignore[arg-type]
        lim.load("k", None, T0 + 0.1)
        assert not lim.hit("k", T0 + 0.5, per_minute=1000, burst=50).allowed
        assert lim.fresh("k", T0 + 0.5) and not lim.fresh("k", T0 + 5) and not lim.fresh("other", T0)


class TestSync:
    """Counts go to rate_sync() once each; windows come back; nothing is lost on a failure."""

    async def test_counts_sent_once_and_windows_read_back(self) -> None:
        """Three requests in one second are one delta; the windows read back replace the local count."""
        pool = FakePool()
        lim = _limiter(pool)
        for _ in range(3):
            lim.hit("k", T0 + 0.5, per_minute=1000, burst=5)
        pool.rows = [_row("k", int(T0), 0, 5, int(T0), 0, 5)]  # the 3 here and 2 from another process
        assert await lim.sync() == 1
        assert pool.calls[-1] == (["k"], [int(T0)], [3], ["k"])
        assert not lim.hit("k", T0 + 0.6, per_minute=1000, burst=5).allowed
        pool.rows = [_row("k", int(T0), 0, 5, int(T0), 0, 5)]
        await lim.sync()
        assert pool.calls[-1] == ([], [], [], ["k"]), "a count was sent twice"

    async def test_failed_sync_keeps_counts(self) -> None:
        """A sync that fails neither loses its counts nor lets them be forgotten by the next decision."""
        pool = FakePool()
        lim = _limiter(pool)
        for _ in range(4):
            lim.hit("k", T0 + 0.5, per_minute=1000, burst=5)
        pool.fail = OSError("down")
        with pytest.raises(OSError):
            await lim.sync()
        assert lim.hit("k", T0 + 0.5, per_minute=1000, burst=5).allowed
        assert not lim.hit("k", T0 + 0.5, per_minute=1000, burst=5).allowed
        pool.fail = None
        await lim.sync()
        assert pool.calls[-1] == (["k"], [int(T0)], [5], ["k"])


class TestKeyCache:
    """Invalidation by key and account; nothing stored by a lookup that an invalidation overtook."""

    def _cache(self) -> KeyCache:
        cache = KeyCache("postgresql://unused", check_s=0.1, clock=lambda: 0.0)
        cache._conn = type("Open", (), {"is_closed": lambda self: False})()  # type: ignore[assignment]
        cache._trusted_until = 1.0
        return cache

    def test_invalidate_key_and_account(self) -> None:
        """``k:`` drops one key, ``a:`` every key of an account, anything else everything."""
        cache = self._cache()
        entries = {b"1": Principal("a1", "k1", None), b"2": Principal("a1", "k2", None),
                   b"3": Principal("a2", "k3", None)}
        for digest, p in entries.items():
            cache.put(digest, p, cache.token())
        cache.invalidate("k:k1")
        assert cache.get(b"1") is None and cache.get(b"2") is not None
        cache.invalidate("a:a1")
        assert cache.get(b"2") is None and cache.get(b"3") is not None
        cache.invalidate("?")
        assert len(cache) == 0

    def test_lookup_overtaken_by_invalidation_is_not_stored(self) -> None:
        """A lookup that read the key before its revocation was notified must not cache it."""
        cache = self._cache()
        token = cache.token()
        cache.invalidate("k:k1")
        cache.put(b"1", Principal("a1", "k1", None), token)
        assert cache.get(b"1") is None

    def test_untrusted_serves_nothing(self) -> None:
        """Past the last confirmation's window, or without a connection, every key is looked up."""
        cache = self._cache()
        cache.put(b"1", Principal("a1", "k1", None), cache.token())
        assert cache.get(b"1") is not None
        cache._trusted_until = 0.0
        assert cache.get(b"1") is None
