"""docs/events.schema.json and the parser agree on what a valid event is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from qlara_events.domain.events import parse_event
from qlara_events.errors import InvalidEvent

from unit.domain.test_events import INBOUND, STATUS, SUBMITTED

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "docs" / "events.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())

VALID = [SUBMITTED, STATUS, INBOUND, {**STATUS, "provider": None, "providerMessageId": None, "messageId": "m"}]
INVALID = [
    {**SUBMITTED, "channel": "FAX"},
    {**SUBMITTED, "parts": 0},
    {**SUBMITTED, "messageId": ""},
    {k: v for k, v in SUBMITTED.items() if k != "destination"},
    {**STATUS, "status": "delivered"},
    {k: v for k, v in STATUS.items() if k not in ("provider", "providerMessageId")},
    {**INBOUND, "text": 5},
    {**INBOUND, "channel": None},
    {"type": "message.other", "id": "x", "occurredAt": "2026-01-01T00:00:00Z"},
]


class TestSchemaMatchesParser:
    """A document the schema accepts parses, and one it rejects raises InvalidEvent."""

    @pytest.mark.parametrize("event", VALID)
    def test_valid(self, event: dict[str, Any]) -> None:
        """Both accept."""
        VALIDATOR.validate(event)
        parse_event(event)

    @pytest.mark.parametrize("event", INVALID)
    def test_invalid(self, event: dict[str, Any]) -> None:
        """Both reject."""
        assert not VALIDATOR.is_valid(event)
        with pytest.raises(InvalidEvent):
            parse_event(event)
