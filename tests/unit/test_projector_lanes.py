"""The projector's lanes: a batch split by Kafka key, each lane's transactions in order, batch after batch.

The scheduling is pure asyncio; the database work (``Projector._apply_lane``) is replaced by a recorder that
holds each transaction until the test lets it commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from qlara_events.projector.consumer import MIN_LANE, Projector, _lanes
from qlara_events.store.projection import BatchResult


@dataclasses.dataclass
class Rec:
    """The fields of a consumer record the lanes read."""

    key: bytes
    offset: int
    partition: int = 0


class Ev:
    id = "e"


@dataclasses.dataclass
class Inc:
    event: Any = dataclasses.field(default_factory=Ev)


def batch(keys: Sequence[str], start: int = 0) -> list[tuple[Any, Any]]:
    return [(Rec(k.encode(), start + i), Inc()) for i, k in enumerate(keys)]


class TestSplit:
    def test_a_key_stays_in_one_lane_in_offset_order(self) -> None:
        pairs = batch([f"twilio:SM{i % 37}" for i in range(1000)])
        lanes = _lanes(pairs, 4)
        assert sum(map(len, lanes)) == 1000 and all(lanes)
        where: dict[bytes, int] = {}
        for n, lane in enumerate(lanes):
            offsets = [r.offset for r, _ in lane]
            assert offsets == sorted(offsets)
            for r, _ in lane:
                assert where.setdefault(r.key, n) == n, "a key was split over two lanes"

    def test_the_lane_of_a_key_does_not_depend_on_the_batch(self) -> None:
        first = {r.key: n for n, lane in enumerate(_lanes(batch(["a", "b", "c", "d", "e"] * 50), 4)) for r, _ in lane}
        second = {r.key: n for n, lane in enumerate(_lanes(batch(["e", "d", "c"] * 90), 4)) for r, _ in lane}
        assert all(first[k] == n for k, n in second.items())


class Recorder:
    """Stands in for the database: each lane transaction waits until released; starts and commits are logged."""

    def __init__(self) -> None:
        self.log: list[tuple[str, frozenset[bytes]]] = []
        self.gates: dict[frozenset[bytes], asyncio.Event] = {}

    async def apply(self, pairs: list[tuple[Any, Any]], relayed: Sequence[str]) -> Any:
        keys = frozenset(r.key for r, _ in pairs)
        self.log.append(("start", keys))
        gate = self.gates.setdefault(keys, asyncio.Event())
        await gate.wait()
        self.log.append(("commit", keys))
        return BatchResult(), []

    def release(self, keys: frozenset[bytes]) -> None:
        self.gates.setdefault(keys, asyncio.Event()).set()

    def started(self, keys: frozenset[bytes]) -> bool:
        return ("start", keys) in self.log


def projector(lanes: int, rec: Recorder) -> Projector:
    settings = type("S", (), {"projector_lanes": lanes, "kafka_instance_id": None})()
    p = Projector(settings, pool=None)  # type: ignore[arg-type]
    p._apply_lane = rec.apply  # type: ignore[method-assign]
    return p


def two_keys_in_other_lanes(n: int) -> tuple[str, str]:
    """Two keys that fall in different lanes of ``n``."""
    lane_of = {k: next(i for i, lane in enumerate(_lanes(batch([k]), n)) if lane) for k in map(str, range(100))}
    a = "0"
    b = next(k for k, lane in lane_of.items() if lane != lane_of[a])
    return a, b


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class TestOrder:
    async def test_a_lane_waits_for_its_own_previous_transaction_only(self) -> None:
        rec = Recorder()
        p = projector(2, rec)
        a, b = two_keys_in_other_lanes(2)
        half = MIN_LANE
        first, tails = p._start_lanes(batch([a] * half + [b] * half), [])
        second, tails = p._start_lanes(batch([a] * half + [b] * half, 1000), tails)
        await settle()
        ka, kb = frozenset({a.encode()}), frozenset({b.encode()})
        assert len(rec.log) == 2 and set(rec.log) == {("start", ka), ("start", kb)}, "batch 2 started before batch 1's lanes committed"
        rec.gates[kb].set()  # lane b of batch 1 commits; lane a of batch 1 is still open
        await settle()
        # Lane b's next transaction (batch 2) may go; lane a's may not.
        assert rec.log.count(("start", kb)) == 2 and rec.log.count(("start", ka)) == 1
        rec.gates[ka].set()
        await asyncio.gather(*first, *second)
        assert rec.log.count(("start", ka)) == 2
        starts_a = [i for i, e in enumerate(rec.log) if e == ("start", ka)]
        assert rec.log.index(("commit", ka)) < starts_a[1]

    async def test_a_small_batch_waits_for_every_lane(self) -> None:
        rec = Recorder()
        p = projector(2, rec)
        a, b = two_keys_in_other_lanes(2)
        first, tails = p._start_lanes(batch([a] * MIN_LANE + [b] * MIN_LANE), [])
        small, tails = p._start_lanes(batch([a, b], 1000), tails)
        await settle()
        ka, kb, both = frozenset({a.encode()}), frozenset({b.encode()}), frozenset({a.encode(), b.encode()})
        rec.gates[ka].set()
        await settle()
        assert not rec.started(both), "a one-transaction batch started while a lane of the batch before was open"
        rec.gates[kb].set()
        rec.release(both)
        await asyncio.gather(*first, *small)
        assert rec.started(both)
        # The next batch, split again, waits for the small one in every lane.
        assert tails == [small[0], small[0]]

    async def test_a_failed_lane_stops_its_successor(self) -> None:
        rec = Recorder()
        p = projector(2, rec)

        async def broken(pairs: Any, relayed: Sequence[str]) -> Any:
            raise RuntimeError("boom")

        p._apply_lane = broken  # type: ignore[method-assign]
        first, tails = p._start_lanes(batch(["x"] * 3), [])
        await settle()  # the first transaction has called (and failed in) the broken stand-in
        p._apply_lane = rec.apply  # type: ignore[method-assign]
        nxt, _ = p._start_lanes(batch(["x"] * 3, 10), tails)
        with pytest.raises(RuntimeError, match="earlier transaction"):
            await nxt[0]
        assert rec.log == [], "the lane applied later events after an earlier transaction failed"
        with pytest.raises(RuntimeError, match="boom"):
            await first[0]

