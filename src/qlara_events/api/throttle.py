"""In-process throttle of failed API-key lookups per client address (each one costs a database query).

Each address may fail ``per_minute`` lookups a minute (a GCRA cell: bursts of that many, then one per
60/``per_minute`` s). Past that, a request from the address is answered 429 before the lookup, unless its key
authenticated on this process recently: partners behind the same address as an attacker (a NAT, a proxy)
keep working. That exception only skips the throttle; the key is still checked (from the key cache, which a
revocation empties of it at once, or in Postgres), so a revocation stays immediate. Per process, so N api
processes allow N times the figure; memory is bounded by ``MAX_ENTRIES``.
"""

from __future__ import annotations

import math
from typing import Final

MAX_ENTRIES: Final = 100_000


class FailureThrottle:
    """Failed lookups per client address, and the key digests that authenticated recently."""

    def __init__(self, per_minute: int, *, remember_s: float = 600.0) -> None:
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._tolerance = 60.0 - self._interval
        self._tat: dict[str, float] = {}
        self._good: dict[bytes, float] = {}
        self._remember_s = remember_s

    @property
    def enabled(self) -> bool:
        """False when configured with 0 (no throttle)."""
        return self._interval > 0

    def retry_after(self, address: str, digest: bytes, now: float) -> int | None:
        """Seconds the address must wait before its next lookup, or None when the lookup may go ahead."""
        if not self.enabled:
            return None
        tat = self._tat.get(address)
        if tat is None or tat - now <= self._tolerance:
            return None
        seen = self._good.get(digest)
        if seen is not None and now - seen < self._remember_s:
            return None
        return max(1, math.ceil(tat - now - self._tolerance))

    def failed(self, address: str, now: float) -> None:
        """Count one failed lookup from ``address``."""
        if not self.enabled:
            return
        self._tat[address] = max(self._tat.get(address, now), now) + self._interval
        if len(self._tat) > MAX_ENTRIES:
            self._tat = {a: t for a, t in self._tat.items() if t > now}
            if len(self._tat) > MAX_ENTRIES:  # a spread-out flood: forget the oldest half
                self._tat = dict(list(self._tat.items())[MAX_ENTRIES // 2:])

    def succeeded(self, digest: bytes, now: float) -> None:
        """Remember that the key with this digest authenticated at ``now``."""
        if not self.enabled:
            return
        self._good.pop(digest, None)
        self._good[digest] = now  # re-inserted: the dict stays ordered by last success
        if len(self._good) > MAX_ENTRIES:
            self._good = dict(list(self._good.items())[MAX_ENTRIES // 2:])
