"""Per-webhook slots, waiting lines and breakers (pure; the clock is passed in)."""

from __future__ import annotations

from qlara_events.dispatcher.lanes import Lanes


def lanes(per: int = 2, total: int = 10) -> tuple[Lanes[str], list[str]]:
    started: list[str] = []
    ln: Lanes[str] = Lanes(per, total, breaker_failures=2, breaker_cooldown_s=10.0, start=started.append)
    return ln, started


class TestSlots:
    """Caps per webhook and per process; a freed slot goes to the webhook's oldest waiter."""

    def test_per_endpoint_cap(self) -> None:
        """The third attempt of a webhook with two slots is refused; another webhook still gets one."""
        ln, _ = lanes(per=2)
        assert ln.try_acquire("a", 0) and ln.try_acquire("a", 0)
        assert not ln.try_acquire("a", 0)
        assert ln.try_acquire("b", 0)
        assert ln.total_in_flight == 3 and ln.busy() == {"a": 2, "b": 1}

    def test_total_cap(self) -> None:
        """No webhook gets a slot once the process total is reached."""
        ln, _ = lanes(per=5, total=2)
        assert ln.try_acquire("a", 0) and ln.try_acquire("b", 0)
        assert not ln.try_acquire("c", 0)

    def test_release_starts_oldest_waiter(self) -> None:
        """Waiters start in arrival order as slots free, skipping the ones no longer wanted."""
        ln, started = lanes(per=1)
        assert ln.try_acquire("a", 0)
        for item in ("x", "gone", "y"):
            ln.wait("a", item)
        ln.wanted = lambda item: item != "gone"
        ln.release("a", 0)
        assert started == ["x"]
        ln.release("a", 0)
        assert started == ["x", "y"] and ln.waiting("a") == 0

    def test_total_cap_release_serves_other_webhooks(self) -> None:
        """A slot freed under the process cap goes to another webhook's waiter when this one has none."""
        ln, started = lanes(per=5, total=1)
        assert ln.try_acquire("a", 0)
        ln.wait("b", "bx")
        ln.release("a", 0)
        assert started == ["bx"] and ln.in_flight("b") == 1


class TestBreaker:
    """An open breaker takes the webhook out of both paths; half-open lets one probe through."""

    def test_open_then_probe(self) -> None:
        """Two failures open it; after the cooldown exactly one attempt may start."""
        ln, _ = lanes(per=5)
        for _ in range(2):
            ln.breaker("a").record(False, 1.0)
        assert ln.is_open("a", 2.0) and not ln.try_acquire("a", 2.0)
        assert ln.try_acquire("a", 12.0)
        assert not ln.try_acquire("a", 12.0)  # the probe is running

    def test_claimable(self) -> None:
        """The retry loop may not claim for an open breaker, a full webhook or one whose line is waiting."""
        ln, _ = lanes(per=2)
        for _ in range(2):
            ln.breaker("open").record(False, 0.0)
        ln.try_acquire("full", 0)
        ln.try_acquire("full", 0)
        ln.try_acquire("half", 0)
        ln.try_acquire("queued", 0)
        ln.try_acquire("queued", 0)
        ln.wait("queued", "q")
        exclude, free = ln.claimable(1.0)
        assert set(exclude) == {"open", "full", "queued"}
        assert free == {"half": 1}


    def test_a_line_with_nothing_in_flight_is_served_by_the_next_claim(self) -> None:
        """A probe fails while changes wait behind it; they spill (no longer wanted). Nothing is in flight to
        release a slot, so the claim serves the line: the spilled ones leave it, and once the breaker lets a
        probe through the webhook is claimable again (issue #10: make chaos's receiver-down scenario at
        1,000/s left 22,527 deliveries scheduled for good)."""
        ln, started = lanes(per=5)
        spilled: set[str] = set()
        ln.wanted = lambda item: item not in spilled
        for _ in range(2):
            ln.breaker("a").record(False, 0.0)
        assert ln.try_acquire("a", 10.0)  # half-open: the probe
        ln.wait("a", "w1")
        ln.wait("a", "w2")
        ln.breaker("a").record(False, 11.0)  # the probe failed: open again
        ln.release("a", 11.0)  # its slot: the line is pumped, but the breaker is open
        assert ln.waiting("a") == 2 and started == []
        spilled.update({"w1", "w2"})  # the intake made them durable (the retry schedule holds them)
        exclude, _ = ln.claimable(12.0)
        assert ln.waiting("a") == 0, "spilled waiters kept the line"
        assert "a" in exclude  # still open at 12.0
        exclude, free = ln.claimable(22.0)  # half-open: the retry loop may send the probe
        assert "a" not in exclude and free.get("a") == 1


class TestStalled:
    """A webhook is stalled when attempts are in flight and none ended for a while; busy is not stalled."""

    def test_busy_then_stalled(self) -> None:
        """In flight since t=0: not stalled at 0.5 s, stalled at 1.5 s; an answer at 1.6 s makes it busy again."""
        ln, _ = lanes(per=2)
        assert ln.try_acquire("a", 0.0) and ln.try_acquire("a", 0.0)
        assert not ln.stalled("a", 0.5, 1.0)
        assert ln.stalled("a", 1.5, 1.0)
        ln.release("a", 1.6)
        assert not ln.stalled("a", 2.0, 1.0)
        assert ln.stalled("a", 2.7, 1.0)

    def test_idle_is_not_stalled(self) -> None:
        """Nothing in flight: never stalled, and a new first attempt starts a fresh clock."""
        ln, _ = lanes(per=2)
        assert not ln.stalled("a", 100.0, 1.0)
        assert ln.try_acquire("a", 100.0)
        assert not ln.stalled("a", 100.5, 1.0)
