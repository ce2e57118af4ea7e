"""The projection rules as pure functions (no database)."""

from __future__ import annotations

import datetime as dt

import pytest

from qlara_events.domain.events import EventError, StatusReport
from qlara_events.domain.projection import Effect, MessageState, apply_report
from qlara_events.domain.status import DeliveryStatus as S

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def report(status: S, minute: int = 0, **kw: object) -> StatusReport:
    return StatusReport(id=f"e-{status}-{minute}", occurred_at=T0 + dt.timedelta(minutes=minute), status=status,
                        message_id="m", **kw)  # type: ignore[arg-type]


def fold(*statuses: S, parts: int = 1) -> tuple[MessageState, list[Effect]]:
    state = MessageState("m", S.SENT, parts=parts)
    effects = [apply_report(state, report(s, i), None)[0] for i, s in enumerate(statuses)]
    return state, effects


class TestRank:
    """The status only moves up the rank order."""

    @pytest.mark.parametrize(("sequence", "final"), [
        ((S.DELIVERED, S.SENT), S.DELIVERED),
        ((S.RECEIVED, S.SENT, S.UNKNOWN), S.RECEIVED),
        ((S.ERROR, S.EXPIRED), S.ERROR),
        ((S.EXPIRED, S.ERROR), S.EXPIRED),
        ((S.ERROR, S.DELIVERED), S.DELIVERED),
        ((S.READ, S.DELIVERED), S.READ),
        ((S.UNKNOWN,), S.SENT),
    ])
    def test_order(self, sequence: tuple[S, ...], final: S) -> None:
        """Every permutation ends at the highest-ranked status seen."""
        assert fold(*sequence)[0].status is final

    def test_lower_rank_is_superseded(self) -> None:
        """A late SENT after DELIVERED is recorded as superseded, with no transition."""
        state = MessageState("m", S.DELIVERED)
        effect, transition = apply_report(state, report(S.SENT), None)
        assert effect is Effect.SUPERSEDED and transition is None

    def test_transition_carries_previous(self) -> None:
        """A real transition names the status it left."""
        state = MessageState("m", S.SENT)
        _, transition = apply_report(state, report(S.DELIVERED), None)
        assert transition is not None and transition.previous is S.SENT and transition.status is S.DELIVERED


class TestTimestamps:
    """Provider timestamps fill *_at fields but never decide the order."""

    def test_read_implies_delivered(self) -> None:
        """READ first fills deliveredAt with its own time."""
        state, _ = fold(S.READ)
        assert state.delivered_at == T0 and state.read_at == T0

    def test_real_delivery_time_wins_when_earlier(self) -> None:
        """A DELIVERED with an earlier time, arriving after READ, corrects deliveredAt."""
        state = MessageState("m", S.SENT)
        apply_report(state, report(S.READ, 5), None)
        apply_report(state, report(S.DELIVERED, 3), None)
        assert state.status is S.READ and state.delivered_at == T0 + dt.timedelta(minutes=3)


class TestFailures:
    """Failures after delivery are flagged, not applied."""

    def test_failure_after_delivery(self) -> None:
        """ERROR after DELIVERED leaves DELIVERED and sets the flag."""
        state, effects = fold(S.DELIVERED, S.ERROR)
        assert state.status is S.DELIVERED and state.failed_after_delivery
        assert effects[-1] is Effect.FAILURE_AFTER_DELIVERY

    def test_error_details_are_kept(self) -> None:
        """The provider's error code and message are projected with the failure."""
        state = MessageState("m", S.SENT)
        apply_report(state, report(S.ERROR, error=EventError("30008", "Unknown error", True)), None)
        assert (state.error_code, state.error_message) == ("30008", "Unknown error")


class TestMultipart:
    """A multi-part message is the minimum of its parts."""

    def test_delivered_only_when_every_part_is(self) -> None:
        """Two of three parts delivered keep the message SENT; the third makes it DELIVERED."""
        state = MessageState("m", S.SENT, parts=3)
        apply_report(state, report(S.DELIVERED, 1), 1)
        apply_report(state, report(S.DELIVERED, 2), 2)
        assert state.status is S.SENT
        _, transition = apply_report(state, report(S.DELIVERED, 3), 3)
        assert state.status is S.DELIVERED and transition is not None

    def test_mixed_result(self) -> None:
        """Delivered + expired parts make an EXPIRED message described as partial."""
        state = MessageState("m", S.SENT, parts=2)
        apply_report(state, report(S.DELIVERED, 1), 1)
        apply_report(state, report(S.EXPIRED, 2), 2)
        assert state.status is S.EXPIRED
        assert state.description == "Partially delivered: 1 of 2 parts delivered"

    def test_message_level_report_applies_to_every_part(self) -> None:
        """A receipt without a part number covers the whole message."""
        state = MessageState("m", S.SENT, parts=2)
        apply_report(state, report(S.DELIVERED), None)
        assert state.status is S.DELIVERED
