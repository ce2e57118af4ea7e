"""The body of ``POST /ingest/v1/events``: one JSON object, a JSON array, or NDJSON.

All-or-nothing: a request with one invalid event is rejected whole (400, naming the event's index), so
an upstream sender never has to work out which half of its batch was kept.
"""

from __future__ import annotations

import orjson

from qlara_events.domain.events import Event, parse_event
from qlara_events.errors import InvalidEvent, PayloadTooLarge

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})


def decode_events(body: bytes, content_type: str, *, max_events: int) -> list[Event]:
    """Parse and validate every event in the body."""
    items: list[object]
    if content_type in NDJSON_TYPES:
        items = []
        for n, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                raise InvalidEvent(f"line {n} is not valid JSON") from None
    else:
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidEvent("body is not valid JSON") from None
        items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise InvalidEvent("no events in the body")
    if len(items) > max_events:
        raise PayloadTooLarge(f"at most {max_events} events per request; got {len(items)}")
    events = []
    for i, item in enumerate(items):
        try:
            events.append(parse_event(item))
        except InvalidEvent as exc:
            raise InvalidEvent(f"event {i}: {exc.message}") from None
    return events
