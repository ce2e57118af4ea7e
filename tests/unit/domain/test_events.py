"""The canonical event parser: the one validator for ingest, Kafka and the projector."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlara_events.domain.events import Inbound, StatusReport, Submitted, parse_event, to_json
from qlara_events.errors import InvalidEvent

SUBMITTED: dict[str, Any] = {
    "type": "message.submitted", "id": "e1", "occurredAt": "2026-04-02T09:01:12+02:00", "accountId": "a1",
    "channel": "SMS", "messageId": "m1", "customerMessageId": "c1", "provider": "twilio",
    "providerMessageId": "SM1", "destination": "+393331112233", "parts": 2, "partProviderMessageIds": ["SM2"],
}
STATUS: dict[str, Any] = {"type": "message.status", "id": "e2", "occurredAt": "2026-04-02T09:01:12Z",
                          "provider": "twilio", "providerMessageId": "SM1", "status": "DELIVERED",
                          "error": {"code": 30008, "message": "x", "permanent": False}}
INBOUND: dict[str, Any] = {"type": "message.inbound", "id": "e3", "occurredAt": "2026-04-02T09:01:12Z",
                           "channel": "WHATSAPP", "source": "+39333", "destination": "+39400", "text": "hi"}


class TestParse:
    """Valid events parse to their types and round-trip; invalid ones name the field."""

    @pytest.mark.parametrize(("raw", "kind"), [(SUBMITTED, Submitted), (STATUS, StatusReport), (INBOUND, Inbound)])
    def test_round_trip(self, raw: dict[str, Any], kind: type) -> None:
        """parse(to_json(parse(x))) == parse(x)."""
        ev = parse_event(raw)
        assert isinstance(ev, kind)
        assert parse_event(to_json(ev)) == ev

    def test_times_are_normalised_to_utc(self) -> None:
        """An offset time is kept as the same instant in UTC."""
        ev = parse_event(SUBMITTED)
        assert ev.occurred_at.isoformat() == "2026-04-02T07:01:12+00:00"

    @pytest.mark.parametrize(("change", "field"), [
        ({"type": "message.nope"}, "type"),
        ({"channel": "FAX"}, "channel"),
        ({"occurredAt": "2026-04-02T09:01:12"}, "occurredAt"),
        ({"provider": "sinch"}, "provider"),
        ({"parts": 0}, "parts"),
        ({"partProviderMessageIds": ["a", "b"]}, "partProviderMessageIds"),
        ({"messageId": ""}, "messageId"),
        ({"destination": None}, "destination"),
    ])
    def test_invalid_submitted(self, change: dict[str, Any], field: str) -> None:
        """Each schema violation is an InvalidEvent naming its field."""
        with pytest.raises(InvalidEvent) as exc:
            parse_event({**SUBMITTED, **change})
        assert exc.value.field == field

    def test_status_needs_an_identity(self) -> None:
        """A status without messageId nor provider + providerMessageId is refused."""
        raw = {k: v for k, v in STATUS.items() if k not in ("provider", "providerMessageId")}
        with pytest.raises(InvalidEvent, match="identify the message"):
            parse_event(raw)

    def test_unknown_status(self) -> None:
        """Only Qlara's status vocabulary is accepted."""
        with pytest.raises(InvalidEvent) as exc:
            parse_event({**STATUS, "status": "delivered"})
        assert exc.value.field == "status"

    def test_anything_is_an_event_or_invalid(self) -> None:
        """Any JSON value (arbitrary, or an event with one field replaced) parses and round-trips, or raises
        InvalidEvent, nothing else; both outcomes occur, so neither a parser that accepts everything nor one
        that rejects everything passes."""
        outcomes = _outcomes(_anything)
        assert outcomes == {"parsed", "invalid"}, outcomes

    def test_mutated_submissions(self) -> None:
        """Any mutation of a valid submission (its optional fields too) parses and round-trips, or raises InvalidEvent, nothing else;
        both outcomes occur."""
        outcomes = _outcomes(_mutated)
        assert outcomes == {"parsed", "invalid"}, outcomes


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=6), max_leaves=20)
SMALL = st.none() | st.integers() | st.text(max_size=5)


def _check(value: object, outcomes: set[str]) -> None:
    """Parse ``value``; a parsed event must survive the round trip, a refusal must be InvalidEvent."""
    try:
        ev = parse_event(value)
    except InvalidEvent:
        outcomes.add("invalid")
        return
    assert parse_event(to_json(ev)) == ev
    outcomes.add("parsed")


def _outcomes(test: Any) -> set[str]:
    outcomes: set[str] = set()
    test(outcomes)
    return outcomes


def _anything(outcomes: set[str]) -> None:
    @given(JSON | st.builds(lambda base, k, v: {**base, k: v}, st.sampled_from([SUBMITTED, STATUS, INBOUND]),
                            st.text(max_size=20), JSON))
    def run(value: object) -> None:
        _check(value, outcomes)

    run()


def _mutated(outcomes: set[str]) -> None:
    @given(st.dictionaries(st.sampled_from([*sorted(SUBMITTED), "sender", "campaignId"]), SMALL))
    def run(change: dict[str, object]) -> None:
        _check({**SUBMITTED, **change}, outcomes)

    run()
