"""Retry schedule, Retry-After bounds and the circuit breaker, with the clock and randomness injected."""

from __future__ import annotations

import random

import pytest

from qlara_events.config import DEFAULT_RETRY_SCHEDULE
from qlara_events.dispatcher import payloads
from qlara_events.dispatcher.policy import BreakerState, CircuitBreaker, RetryPolicy


class TestRetryPolicy:
    """Delays follow the schedule within ±20 % and stop when it is exhausted."""

    @pytest.mark.parametrize("attempts_made", range(1, len(DEFAULT_RETRY_SCHEDULE)))
    def test_jitter_bounds(self, attempts_made: int) -> None:
        """Every delay lies within ±20 % of its scheduled value."""
        policy = RetryPolicy(DEFAULT_RETRY_SCHEDULE)
        base = DEFAULT_RETRY_SCHEDULE[attempts_made]
        delays = [policy.next_delay(attempts_made, 500, None, random.Random(i)) for i in range(200)]
        assert all(d is not None and base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len({round(d or 0, 6) for d in delays}) > 1  # jittered, not constant

    def test_exhausted(self) -> None:
        """After the last scheduled attempt there is no next delay (the delivery is dead)."""
        assert RetryPolicy(DEFAULT_RETRY_SCHEDULE).next_delay(8, 500, None) is None

    @pytest.mark.parametrize(("status", "retry_after", "low", "high"), [
        (429, 120.0, 120.0, 120.0), (503, 0.0, 4.0, 6.0), (429, 10**9, 6 * 3600.0, 6 * 3600.0),
        (500, 120.0, 4.0, 6.0),
    ])
    def test_retry_after(self, status: int, retry_after: float, low: float, high: float) -> None:
        """Retry-After counts for 429/502/503/504 only, bounded to [1 s, 6 h], never below the schedule."""
        delay = RetryPolicy(DEFAULT_RETRY_SCHEDULE).next_delay(1, status, retry_after, random.Random(1))
        assert delay is not None and low <= delay <= high


class TestCircuitBreaker:
    """Opens after N consecutive failures, lets one probe through after the cooldown."""

    def test_cycle(self) -> None:
        """closed → open after 3 failures → half-open probe → closed on success."""
        b = CircuitBreaker(threshold=3, cooldown_s=10)
        for t in range(3):
            assert b.allow(t)
            b.record(False, t)
        assert b.state(3) is BreakerState.OPEN and not b.allow(3)
        assert b.state(13) is BreakerState.HALF_OPEN
        assert b.allow(13) and not b.allow(13)  # one probe at a time
        b.record(True, 14)
        assert b.state(14) is BreakerState.CLOSED

    def test_failed_probe_reopens(self) -> None:
        """A failing probe opens the breaker for another cooldown."""
        b = CircuitBreaker(threshold=1, cooldown_s=10)
        b.record(False, 0)
        assert b.allow(10)
        b.record(False, 10)
        assert b.state(15) is BreakerState.OPEN

    def test_success_resets_count(self) -> None:
        """Failures must be consecutive to open it."""
        b = CircuitBreaker(threshold=2, cooldown_s=10)
        b.record(False, 0)
        b.record(True, 1)
        b.record(False, 2)
        assert b.state(2) is BreakerState.CLOSED


class TestPayloads:
    """The partner payload and its stable id."""

    def test_delivery_id_is_stable_and_distinct(self) -> None:
        """Same change and webhook → same id; another webhook → another id."""
        assert payloads.delivery_id("m:DELIVERED", "wh1") == payloads.delivery_id("m:DELIVERED", "wh1")
        assert payloads.delivery_id("m:DELIVERED", "wh1") != payloads.delivery_id("m:DELIVERED", "wh2")

    def test_read_is_read_event(self) -> None:
        """A READ change is eventType READ; others are DELIVERY."""
        change = {"id": "x", "messageId": "m", "status": "READ", "occurredAt": "2026-01-01T00:00:00Z"}
        assert payloads.event_type(change) == "READ"
        assert payloads.event_type({**change, "status": "EXPIRED"}) == "DELIVERY"
