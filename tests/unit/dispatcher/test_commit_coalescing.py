"""The intake's offset commits: only settled batches, in order, at most one commit per ``COMMIT_EVERY_S`` while
changes flow, at once when forced (the stream is idle, or the intake stops). Pure bookkeeping: the consumer is a
recorder of the commits it is asked for."""

from __future__ import annotations

import types
from typing import Any, cast

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from qlara_events.config import Settings
from qlara_events.dispatcher import intake as intake_mod
from qlara_events.dispatcher.intake import Batch, Intake

TP0, TP1 = TopicPartition("changes", 0), TopicPartition("changes", 1)


class Commits:
    """Stands for the consumer: records what it is asked to commit; ``fail`` makes the next commit fail."""

    def __init__(self) -> None:
        self.made: list[dict[TopicPartition, int]] = []
        self.fail = False

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            self.fail = False
            raise KafkaConnectionError("broker away")
        self.made.append(dict(offsets))


def _intake() -> Intake:
    lanes = types.SimpleNamespace(start=None, wanted=None)
    none = cast(Any, None)
    return Intake(Settings(), none, none, cast(Any, lanes), none, none, none, lambda: None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_commits_are_coalesced_in_order_and_only_settled(monkeypatch: Any) -> None:
    clock = Clock()
    monkeypatch.setattr(intake_mod, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    it, consumer = _intake(), Commits()
    first, second, third = Batch({TP0: 10}), Batch({TP0: 20, TP1: 5}, pending=1), Batch({TP1: 9})
    it._batches.extend([first, second, third])

    await it._commit_settled(cast(Any, consumer))
    assert consumer.made == [{TP0: 10}]  # the first commit goes at once; the unsettled second holds the third

    second.pending = 0
    clock.now += intake_mod.COMMIT_EVERY_S / 2
    await it._commit_settled(cast(Any, consumer))
    assert consumer.made == [{TP0: 10}]  # settled, but within the interval: not yet

    clock.now += intake_mod.COMMIT_EVERY_S / 2
    await it._commit_settled(cast(Any, consumer))
    assert consumer.made == [{TP0: 10}, {TP0: 20, TP1: 9}]  # one commit for both, newest offsets win
    assert it.committed_batches == 3


async def test_forced_commit_goes_at_once_and_a_failed_one_is_carried(monkeypatch: Any) -> None:
    clock = Clock()
    monkeypatch.setattr(intake_mod, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    it, consumer = _intake(), Commits()
    it._batches.append(Batch({TP0: 3}))
    await it._commit_settled(cast(Any, consumer))
    it._batches.append(Batch({TP0: 4}))
    consumer.fail = True
    await it._commit_settled(cast(Any, consumer), force=True)  # within the interval, but forced: tried, fails
    assert consumer.made == [{TP0: 3}]
    it._batches.append(Batch({TP1: 8}))
    await it._commit_settled(cast(Any, consumer), force=True)
    assert consumer.made == [{TP0: 3}, {TP0: 4, TP1: 8}]  # the failed offsets went with the next commit
