"""When to retry, when to give up, when to stop trying an endpoint for a while. Pure, clock injected."""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Sequence

#: Bounds on a partner's Retry-After: at least 1 s, at most 6 h.
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 6 * 3600.0
#: Statuses that mean "slow down" and whose Retry-After is honoured.
SLOW_DOWN = frozenset({429, 502, 503, 504})


class Outcome(enum.StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # will be retried
    DEAD = "dead"  # retries exhausted
    GONE = "gone"  # 410: the endpoint asked to be disabled
    SUPERSEDED = "superseded"  # a higher status was already acknowledged; not sent


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A schedule of delays (the first is the initial attempt's, normally 0) with ±``jitter`` spread."""

    schedule: Sequence[float]
    jitter: float = 0.2

    @property
    def max_attempts(self) -> int:
        """Attempts in all, the first included."""
        return len(self.schedule)

    def next_delay(self, attempts_made: int, status: int | None, retry_after: float | None,
                   rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` attempts, or None when exhausted."""
        if attempts_made >= self.max_attempts:
            return None
        base = self.schedule[attempts_made]
        spread = base * self.jitter
        delay = base + (rng or random).uniform(-spread, spread)
        if status in SLOW_DOWN and retry_after is not None:
            delay = max(delay, min(max(retry_after, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S))
        return max(delay, 0.0)


class BreakerState(enum.IntEnum):
    """Circuit-breaker states (the gauge's values)."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclasses.dataclass(slots=True)
class CircuitBreaker:
    """Stops attempts to an endpoint after ``threshold`` consecutive failures, for ``cooldown_s``.

    After the cooldown one probe attempt is let through (half-open): success closes the breaker, a
    failure opens it again. While open, the endpoint's deliveries wait in Postgres instead of tying up
    workers, so a dead partner costs the others nothing.
    """

    threshold: int
    cooldown_s: float
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    def state(self, now: float) -> BreakerState:
        """The state at ``now``."""
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """May an attempt start now? (In half-open, only one probe at a time.)"""
        st = self.state(now)
        if st is BreakerState.CLOSED:
            return True
        if st is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def record(self, success: bool, now: float) -> None:
        """Account for an attempt's result."""
        self.probing = False
        if success:
            self.failures = 0
            self.opened_at = None
            return
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = now
