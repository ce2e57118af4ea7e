"""Google RCS Business Messaging webhooks (Pub/Sub-style envelope, ``X-Goog-Signature``).

The envelope's ``message.data`` is base64 JSON: a UserEvent, a ServerEvent or a UserMessage.

==============================  ===========  ==============================================================
data                            Qlara        note
==============================  ===========  ==============================================================
eventType DELIVERED             DELIVERED
eventType READ                  READ
TTL_EXPIRATION_REVOKED          EXPIRED      server event: ``messageId`` is the revoked (agent) message
TTL_EXPIRATION_REVOKE_FAILED    UNKNOWN      expired but not revoked: delivery is still possible, so it is
                                             history only (``rawStatus`` keeps the word), never a failure
IS_TYPING, (UN)SUBSCRIBE        (none)       no status meaning
another eventType               UNKNOWN      when it names a ``messageId``; otherwise ignored
text / suggestionResponse /     Inbound      channel RCS, from ``senderPhoneNumber`` to ``agentId``
location / userFile
==============================  ===========  ==============================================================

Status event ids come from Google's ``eventId`` (unique per event instance); ``sendTime`` is RFC 3339 with
up to nine fractional digits, truncated to microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from qlara_events.domain.events import Event, Inbound, StatusReport
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    as_object,
    b64decode,
    clip_body,
    decode_json_object,
    event_id,
    hmac_b64,
    opt_str,
    parse_iso,
    received,
    require_id,
    status_event,
    sub_object,
)
from qlara_events.providers.base import OK, Callback, Reply, constant_time_equals

STATUSES: Final[Mapping[str, DeliveryStatus]] = {
    "DELIVERED": DeliveryStatus.DELIVERED,
    "READ": DeliveryStatus.READ,
    "TTL_EXPIRATION_REVOKED": DeliveryStatus.EXPIRED,
    "TTL_EXPIRATION_REVOKE_FAILED": DeliveryStatus.UNKNOWN,
}
DESCRIPTIONS: Final[Mapping[str, str]] = {
    "TTL_EXPIRATION_REVOKED": "Message expired and was revoked before delivery",
    "TTL_EXPIRATION_REVOKE_FAILED": "Message expired but could not be revoked; it may still be delivered",
}
IGNORED: Final = frozenset({"IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE"})
USER_CONTENT: Final = ("text", "suggestionResponse", "location", "userFile")


class RbmProvider:
    """The RBM webhook dialect."""

    name = "rbm"
    #: RBM events reference files by URI; a Pub/Sub push of one event is a few KiB.
    max_body_bytes = 1024 * 1024

    def __init__(self, *, client_token: str) -> None:
        self._client_token = client_token

    def handshake(self, cb: Callback) -> Reply | None:
        """Answer Google's setup POST ``{"clientToken", "secret"}`` with the secret."""
        if cb.method.upper() != "POST":
            return None
        try:
            body = cb.json()
        except InvalidEvent:
            return None
        if not isinstance(body, dict) or "message" in body:
            return None
        token, secret = body.get("clientToken"), body.get("secret")
        if not isinstance(token, str) or not isinstance(secret, str):
            return None
        if not constant_time_equals(token, self._client_token):
            raise Unauthorized("clientToken does not match")
        return Reply(200, secret.encode("utf-8"))

    def verify(self, cb: Callback) -> None:
        """Check ``X-Goog-Signature``: base64 HMAC-SHA512 of the decoded ``message.data`` bytes."""
        given = cb.header("X-Goog-Signature")
        if not given:
            raise Unauthorized("missing X-Goog-Signature")
        if not constant_time_equals(given.strip(), hmac_b64("sha512", self._client_token, _data(cb))):
            raise Unauthorized("X-Goog-Signature does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """The status report or inbound message in ``message.data`` (nothing for typing and the like)."""
        data = decode_json_object(_data(cb), "message.data")
        kind = data.get("eventType")
        if kind is None:
            if any(key in data for key in USER_CONTENT):
                return [self._inbound(cb, data)]
            return []  # e.g. agent launch-state notifications: authentic, but not ours to record
        if not isinstance(kind, str):
            raise InvalidEvent("must be a string", field="message.data.eventType")
        if kind in IGNORED or (kind not in STATUSES and data.get("messageId") is None):
            return []
        return [self._status(cb, data, kind)]

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Google only looks at the status code."""
        return OK

    def _status(self, cb: Callback, data: Mapping[str, Any], kind: str) -> StatusReport:
        message_id = require_id(data, "messageId", "message.data.messageId")
        google_id = opt_str(data, "eventId")
        return status_event(
            provider=self.name,
            provider_message_id=message_id,
            status=STATUSES.get(kind, DeliveryStatus.UNKNOWN),
            raw_status=kind,
            occurred_at=parse_iso(data.get("sendTime")) or received(cb),
            id_parts=(google_id,) if google_id else (message_id, kind),
            description=DESCRIPTIONS.get(kind),
        )

    def _inbound(self, cb: Callback, data: Mapping[str, Any]) -> Inbound:
        message_id = require_id(data, "messageId", "message.data.messageId")
        text, message_type, media = _content(data)
        return Inbound(
            id=event_id(self.name, "in", message_id),
            occurred_at=parse_iso(data.get("sendTime")) or received(cb),
            channel=Channel.RCS,
            source=require_id(data, "senderPhoneNumber", "message.data.senderPhoneNumber"),
            destination=require_id(data, "agentId", "message.data.agentId"),
            text=clip_body(text),
            message_type=message_type,
            provider=self.name,
            provider_message_id=message_id,
            media=tuple(media),
        )


def _data(cb: Callback) -> bytes:
    """The decoded ``message.data`` bytes of the envelope (what Google signs)."""
    envelope = as_object(cb.json(), "body")
    message = as_object(envelope.get("message"), "message")
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidEvent("is required, a base64 string", field="message.data")
    return b64decode(data, "message.data")


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _content(data: Mapping[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """Text, message type and media of a UserMessage."""
    if "text" in data:
        text = data["text"]
        return (text if isinstance(text, str) else ""), "TEXT", []
    if "suggestionResponse" in data:
        return opt_str(sub_object(data, "suggestionResponse"), "text") or "", "SUGGESTION_RESPONSE", []
    if "location" in data:
        location = sub_object(data, "location")
        lat, lng = _number(location.get("latitude")), _number(location.get("longitude"))
        point = (
            [] if lat is None or lng is None else [{"type": "location", "latitude": lat, "longitude": lng}]
        )
        return "", "LOCATION", point
    payload = sub_object(sub_object(data, "userFile"), "payload")
    media: dict[str, Any] = {"type": "file"}
    for src, dst in (("fileUri", "uri"), ("mimeType", "mimeType"), ("fileName", "fileName")):
        if (v := opt_str(payload, src)) is not None:
            media[dst] = v
    return "", "FILE", [media]
