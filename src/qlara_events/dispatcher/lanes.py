"""Per-endpoint slots, waiting lines and circuit breakers, shared by the intake and the retry loop. Pure.

Every attempt holds a slot of its webhook from the start of the request until the response (not until its
outcome is written): at most ``per_endpoint`` at once per webhook and ``total`` in the process. Work that
finds no slot waits in its webhook's line and is started, oldest first, when a slot of that webhook frees;
the intake spills what waits too long to the retry schedule instead.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

from qlara_events.dispatcher.policy import BreakerState, CircuitBreaker

T = TypeVar("T")


class Lanes(Generic[T]):
    """Slots and breakers per webhook id; ``start`` is called with each waiter that gets a slot."""

    def __init__(self, per_endpoint: int, total: int, breaker_failures: int, breaker_cooldown_s: float,
                 start: Callable[[T], None] | None = None) -> None:
        self.per_endpoint = per_endpoint
        self.total = total
        self._breaker_failures = breaker_failures
        self._breaker_cooldown_s = breaker_cooldown_s
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._total_in_flight = 0
        self._waiting: dict[str, collections.deque[T]] = {}
        #: When an attempt of each webhook last ended (monotonic): a webhook with attempts in flight and none
        #: ended for a while is stalled, not merely busy.
        self._last_done: dict[str, float] = {}
        self._busy_since: dict[str, float] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.start = start
        #: A waiter that is no longer wanted (spilled meanwhile) is skipped when its turn comes.
        self.wanted: Callable[[T], bool] = lambda _item: True

    # ----------------------------------------------------------------------------------------------- slots

    def in_flight(self, webhook_id: str) -> int:
        """Attempts of this webhook in progress."""
        return self._in_flight[webhook_id]

    @property
    def total_in_flight(self) -> int:
        """Attempts in progress in the process."""
        return self._total_in_flight

    def busy(self) -> dict[str, int]:
        """In-flight attempts per webhook (only webhooks with some)."""
        return {w: n for w, n in self._in_flight.items() if n}

    def breaker(self, webhook_id: str) -> CircuitBreaker:
        """The webhook's breaker (created closed)."""
        b = self.breakers.get(webhook_id)
        if b is None:
            b = self.breakers[webhook_id] = CircuitBreaker(self._breaker_failures, self._breaker_cooldown_s)
        return b

    def is_open(self, webhook_id: str, now: float) -> bool:
        """Is the webhook's breaker open (no attempt may start)?"""
        b = self.breakers.get(webhook_id)
        return b is not None and b.state(now) is BreakerState.OPEN

    def try_acquire(self, webhook_id: str, now: float) -> bool:
        """Take a slot if the caps and the breaker allow it (half-open lets one probe through)."""
        if self._in_flight[webhook_id] >= self.per_endpoint or self._total_in_flight >= self.total:
            return False
        b = self.breakers.get(webhook_id)
        if b is not None and not b.allow(now):
            return False
        self.take(webhook_id, now)
        return True

    def take(self, webhook_id: str, now: float) -> None:
        """Take a slot the caller already knows is free (a claim sized by :meth:`claimable`)."""
        if not self._in_flight[webhook_id]:
            self._busy_since[webhook_id] = now
        self._in_flight[webhook_id] += 1
        self._total_in_flight += 1

    def stalled(self, webhook_id: str, now: float, after_s: float) -> bool:
        """Has the webhook attempts in flight and none of its attempts ended in the last ``after_s``?

        (A webhook that is only busy, every slot taken but answers coming in, is not stalled.)
        """
        if not self._in_flight[webhook_id]:
            return False
        return now - max(self._last_done.get(webhook_id, 0.0), self._busy_since.get(webhook_id, 0.0)) > after_s

    def release(self, webhook_id: str, now: float) -> None:
        """Free a slot and hand free slots to waiters: this webhook's first, then any webhook's."""
        self._in_flight[webhook_id] -= 1
        self._total_in_flight -= 1
        self._last_done[webhook_id] = now
        if self._in_flight[webhook_id] <= 0:
            del self._in_flight[webhook_id]
            self._busy_since.pop(webhook_id, None)
        self._pump(webhook_id, now)
        if self._total_in_flight < self.total:
            for other in [w for w in self._waiting if w != webhook_id]:
                self._pump(other, now)
                if self._total_in_flight >= self.total:
                    break

    # --------------------------------------------------------------------------------------------- waiting

    def wait(self, webhook_id: str, item: T) -> None:
        """Queue ``item`` for the webhook's next free slot."""
        self._waiting.setdefault(webhook_id, collections.deque()).append(item)

    def waiting(self, webhook_id: str) -> int:
        """Items in the webhook's line (spilled ones included until their turn is skipped)."""
        line = self._waiting.get(webhook_id)
        return len(line) if line else 0

    def _pump(self, webhook_id: str, now: float) -> None:
        line = self._waiting.get(webhook_id)
        while line:
            if not self.wanted(line[0]):
                line.popleft()
                continue
            if not self.try_acquire(webhook_id, now):
                return
            item = line.popleft()
            assert self.start is not None
            self.start(item)
        self._waiting.pop(webhook_id, None)

    # ------------------------------------------------------------------------------------------ retry loop

    def claimable(self, now: float) -> tuple[list[str], dict[str, int]]:
        """What the retry loop may claim: webhooks to exclude (breaker open, or no free slot) and the free
        slots of the webhooks that have fewer than ``per_endpoint`` (the others get ``per_endpoint``).

        A webhook with a waiting line gets nothing: the intake's waiters come first. A line is served when one
        of its webhook's slots is released, so a line with nothing in flight (its probe failed and the breaker
        opened again; its waiters spilled meanwhile) would wait for good, and keep the retry loop and the
        intake's direct path away from the webhook with it: such lines are served here, every claim.
        """
        for w in [w for w in self._waiting if not self._in_flight[w]]:
            self._pump(w, now)
        exclude = [w for w, b in self.breakers.items() if b.state(now) is BreakerState.OPEN]
        free = {w: self.per_endpoint - n for w, n in self._in_flight.items() if n}
        for w, b in self.breakers.items():
            if b.state(now) is BreakerState.HALF_OPEN:
                free[w] = 0 if b.probing or self._in_flight[w] else 1
        for w in self._waiting:
            free[w] = 0
        exclude += [w for w, n in free.items() if n <= 0]
        return exclude, {w: n for w, n in free.items() if n > 0}
