"""Canonical delivery events: the one shape every provider callback is normalised to.

The same JSON shape is accepted from the upstream senders at ``POST /ingest/v1/events``, written to the
``qlara.delivery-events`` topic and read back by the projector, so :func:`parse_event` is the single
validator for all three (schema: docs/events.schema.json).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import orjson

from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import InvalidEvent

PROVIDERS: Final = frozenset({"twilio", "vonage", "infobip", "whatsapp", "rbm", "jasmin"})
MAX_ID_LENGTH: Final = 200
MAX_TEXT_LENGTH: Final = 65_536


@dataclasses.dataclass(frozen=True, slots=True)
class EventError:
    """A provider error attached to a status report."""

    code: str | None = None
    message: str | None = None
    permanent: bool | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    """``message.submitted``: an upstream sender handed a message to a provider."""

    id: str
    occurred_at: dt.datetime
    account_id: str
    channel: Channel
    message_id: str
    customer_message_id: str
    provider: str
    provider_message_id: str
    destination: str
    sender: str | None = None
    campaign_id: str | None = None
    parts: int = 1
    #: Provider ids of parts 2..n when the provider gives each part its own id (Vonage does).
    part_provider_message_ids: tuple[str, ...] = ()

    type: Final = "message.submitted"

    @property
    def key(self) -> str:
        """Kafka key: the provider identity, so its receipts tend to share a partition."""
        return f"{self.provider}:{self.provider_message_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class StatusReport:
    """``message.status``: a delivery receipt, identified by ``message_id`` or by provider identity."""

    id: str
    occurred_at: dt.datetime
    status: DeliveryStatus
    message_id: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    status_code: int | None = None
    description: str | None = None
    error: EventError | None = None
    part: int | None = None
    #: The provider's own status word (``undelivered``, ``DELIVRD``...), kept for the timeline.
    raw_status: str | None = None

    type: Final = "message.status"

    @property
    def key(self) -> str:
        """Kafka key: provider identity when known, else the platform message id."""
        if self.provider and self.provider_message_id:
            return f"{self.provider}:{self.provider_message_id}"
        return f"id:{self.message_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class Inbound:
    """``message.inbound``: a message from an end user to one of the account's senders."""

    id: str
    occurred_at: dt.datetime
    channel: Channel
    source: str
    destination: str
    text: str
    message_type: str = "TEXT"
    #: Known when an upstream sender posts the event; provider callbacks leave it to the projector,
    #: which routes by the destination address (see store/senders.py).
    account_id: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    media: tuple[Mapping[str, Any], ...] = ()

    type: Final = "message.inbound"

    @property
    def key(self) -> str:
        """Kafka key: the conversation (channel, end user), keeping one chat in order."""
        return f"inbound:{self.channel}:{self.source}"


Event = Submitted | StatusReport | Inbound


# --------------------------------------------------------------------------------------------- parsing


def parse_event(obj: object) -> Event:
    """Validate one canonical event (a decoded JSON value) and return its typed form.

    Raises :class:`InvalidEvent` naming the first offending field; never any other exception.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("event must be a JSON object")
    kind = obj.get("type")
    if kind == "message.submitted":
        return _parse_submitted(obj)
    if kind == "message.status":
        return _parse_status(obj)
    if kind == "message.inbound":
        return _parse_inbound(obj)
    if kind is None:
        raise InvalidEvent("'type' is required")
    raise InvalidEvent(
        "unknown event type; expected message.submitted, message.status or message.inbound",
        field="type",
    )


def _parse_submitted(o: dict[str, Any]) -> Submitted:
    parts = _opt_int(o, "parts", 1, 255) or 1
    extra = o.get("partProviderMessageIds")
    part_ids: tuple[str, ...] = ()
    if extra is not None:
        if not isinstance(extra, list) or not all(_is_id(x) for x in extra):
            raise InvalidEvent("must be an array of non-empty strings", field="partProviderMessageIds")
        if len(extra) != parts - 1:
            raise InvalidEvent("must list the provider ids of parts 2..parts", field="partProviderMessageIds")
        part_ids = tuple(extra)
    return Submitted(
        id=_id(o, "id"),
        occurred_at=_time(o, "occurredAt"),
        account_id=_id(o, "accountId"),
        channel=_channel(o),
        message_id=_id(o, "messageId"),
        customer_message_id=_id(o, "customerMessageId"),
        provider=_provider(o, required=True) or "",
        provider_message_id=_id(o, "providerMessageId"),
        destination=_id(o, "destination"),
        sender=_opt_str(o, "sender"),
        campaign_id=_opt_id(o, "campaignId"),
        parts=parts,
        part_provider_message_ids=part_ids,
    )


def _parse_status(o: dict[str, Any]) -> StatusReport:
    message_id = _opt_id(o, "messageId")
    provider = _provider(o, required=False)
    pmid = _opt_id(o, "providerMessageId")
    if message_id is None and (provider is None or pmid is None):
        raise InvalidEvent("identify the message by 'messageId' or by 'provider' + 'providerMessageId'")
    raw = o.get("status")
    try:
        status = DeliveryStatus(str(raw))
    except ValueError:
        raise InvalidEvent(
            "must be one of " + ", ".join(s.value for s in DeliveryStatus), field="status"
        ) from None
    error = o.get("error")
    parsed_error: EventError | None = None
    if error is not None:
        if not isinstance(error, dict):
            raise InvalidEvent("must be an object", field="error")
        code = error.get("code")
        if (code is not None and not isinstance(code, (str, int))) or isinstance(code, bool):
            raise InvalidEvent("must be a string or integer", field="error.code")
        permanent = error.get("permanent")
        if permanent is not None and not isinstance(permanent, bool):
            raise InvalidEvent("must be a boolean", field="error.permanent")
        parsed_error = EventError(
            code=None if code is None else str(code),
            message=_opt_str(error, "message", "error.message"),
            permanent=permanent,
        )
    return StatusReport(
        id=_id(o, "id"),
        occurred_at=_time(o, "occurredAt"),
        status=status,
        message_id=message_id,
        provider=provider,
        provider_message_id=pmid,
        status_code=_opt_int(o, "statusCode", -(2**31), 2**31 - 1),
        description=_opt_str(o, "description"),
        error=parsed_error,
        part=_opt_int(o, "part", 1, 255),
        raw_status=_opt_str(o, "rawStatus"),
    )


def _parse_inbound(o: dict[str, Any]) -> Inbound:
    media = o.get("media")
    if media is None:
        media_t: tuple[Mapping[str, Any], ...] = ()
    elif isinstance(media, list) and all(isinstance(m, dict) for m in media):
        # jsonb cannot hold NUL either; orjson writes it as \u0000.
        if b"\\u0000" in orjson.dumps(media):
            raise InvalidEvent("must not contain NUL characters", field="media")
        media_t = tuple(media)
    else:
        raise InvalidEvent("must be an array of objects", field="media")
    text = o.get("text", "")
    if not isinstance(text, str) or len(text) > MAX_TEXT_LENGTH or "\x00" in text:
        raise InvalidEvent(f"must be a string of at most {MAX_TEXT_LENGTH} characters", field="text")
    message_type = o.get("messageType", "TEXT")
    if not isinstance(message_type, str) or not message_type or len(message_type) > 32 or "\x00" in message_type:
        raise InvalidEvent("must be a short non-empty string", field="messageType")
    return Inbound(
        id=_id(o, "id"),
        occurred_at=_time(o, "occurredAt"),
        account_id=_opt_id(o, "accountId"),
        channel=_channel(o),
        source=_id(o, "source"),
        destination=_id(o, "destination"),
        text=text,
        message_type=message_type.upper(),
        provider=_provider(o, required=False),
        provider_message_id=_opt_id(o, "providerMessageId"),
        media=media_t,
    )


def _is_id(v: object) -> bool:
    # NUL is refused everywhere: Postgres text cannot store it, so it could never be projected.
    return isinstance(v, str) and 0 < len(v) <= MAX_ID_LENGTH and "\x00" not in v


def _id(o: Mapping[str, Any], name: str) -> str:
    v = o.get(name)
    if v is None:
        raise InvalidEvent("is required", field=name)
    if not _is_id(v):
        raise InvalidEvent(f"must be a non-empty string of at most {MAX_ID_LENGTH} characters", field=name)
    return str(v)


def _opt_id(o: Mapping[str, Any], name: str) -> str | None:
    return None if o.get(name) is None else _id(o, name)


def _opt_str(o: Mapping[str, Any], name: str, label: str | None = None) -> str | None:
    v = o.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > 2000 or "\x00" in v:
        raise InvalidEvent("must be a string of at most 2000 characters, without NUL", field=label or name)
    return v


def _opt_int(o: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = o.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidEvent(f"must be an integer from {lo} to {hi}", field=name)
    return v


def _channel(o: Mapping[str, Any]) -> Channel:
    try:
        return Channel(str(o.get("channel")))
    except ValueError:
        raise InvalidEvent("must be SMS, RCS or WHATSAPP", field="channel") from None


def _provider(o: Mapping[str, Any], *, required: bool) -> str | None:
    v = o.get("provider")
    if v is None and not required:
        return None
    if v not in PROVIDERS:
        raise InvalidEvent("must be one of " + ", ".join(sorted(PROVIDERS)), field="provider")
    return str(v)


def _time(o: Mapping[str, Any], name: str) -> dt.datetime:
    v = o.get(name)
    if not isinstance(v, str):
        raise InvalidEvent("is required, an RFC 3339 date-time with offset", field=name)
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise InvalidEvent("must be an RFC 3339 date-time with offset", field=name) from None
    if t.tzinfo is None:
        raise InvalidEvent("must carry a UTC offset", field=name)
    return t.astimezone(dt.UTC)


# ----------------------------------------------------------------------------------------- serialising


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def to_json(event: Event) -> dict[str, Any]:
    """The canonical JSON object of an event; ``parse_event(to_json(e)) == e``."""
    out: dict[str, Any]
    if isinstance(event, Submitted):
        out = {
            "type": event.type,
            "id": event.id,
            "occurredAt": _ts(event.occurred_at),
            "accountId": event.account_id,
            "channel": event.channel.value,
            "messageId": event.message_id,
            "customerMessageId": event.customer_message_id,
            "provider": event.provider,
            "providerMessageId": event.provider_message_id,
            "destination": event.destination,
            "sender": event.sender,
            "campaignId": event.campaign_id,
            "parts": event.parts,
        }
        if event.part_provider_message_ids:
            out["partProviderMessageIds"] = list(event.part_provider_message_ids)
    elif isinstance(event, StatusReport):
        out = {
            "type": event.type,
            "id": event.id,
            "occurredAt": _ts(event.occurred_at),
            "status": event.status.value,
            "messageId": event.message_id,
            "provider": event.provider,
            "providerMessageId": event.provider_message_id,
            "statusCode": event.status_code,
            "description": event.description,
            "part": event.part,
            "rawStatus": event.raw_status,
        }
        if event.error is not None:
            out["error"] = {
                "code": event.error.code,
                "message": event.error.message,
                "permanent": event.error.permanent,
            }
    else:
        out = {
            "type": event.type,
            "id": event.id,
            "occurredAt": _ts(event.occurred_at),
            "accountId": event.account_id,
            "channel": event.channel.value,
            "source": event.source,
            "destination": event.destination,
            "text": event.text,
            "messageType": event.message_type,
            "provider": event.provider,
            "providerMessageId": event.provider_message_id,
        }
        if event.media:
            out["media"] = [dict(m) for m in event.media]
    return {k: v for k, v in out.items() if v is not None}
