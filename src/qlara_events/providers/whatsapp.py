"""Meta WhatsApp Cloud API webhooks (``X-Hub-Signature-256``; ``hub.*`` verification handshake).

One POST is a batch: every ``entry[].changes[]`` whose ``field`` is ``messages`` contributes its
``statuses[]`` (delivery receipts) and ``messages[]`` (inbound user messages); other fields yield nothing.

``status`` → Qlara status: sent → SENT; delivered → DELIVERED; read → READ; failed → ERROR (with
``errors[0]``); deleted, and any word Meta adds later → UNKNOWN, kept in history only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from qlara_events.domain.events import Event, EventError, Inbound, StatusReport
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import Forbidden, InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    as_list,
    as_object,
    clip,
    clip_body,
    e164,
    event_id,
    hmac_hex,
    opt_int,
    opt_list,
    opt_str,
    parse_unix,
    received,
    require_id,
    status_event,
    sub_object,
)
from qlara_events.providers.base import OK, Callback, Reply, constant_time_equals

STATUSES: Final[Mapping[str, DeliveryStatus]] = {
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.ERROR,
    "deleted": DeliveryStatus.UNKNOWN,
}
MEDIA_TYPES: Final = frozenset({"image", "video", "audio", "document", "sticker"})
_SIGNATURE_PREFIX: Final = "sha256="


class WhatsAppProvider:
    """The WhatsApp Cloud API webhook dialect."""

    name = "whatsapp"
    #: Meta documents WhatsApp webhook payloads up to 3 MB.
    max_body_bytes = 4 * 1024 * 1024

    def __init__(self, *, app_secret: str, verify_token: str) -> None:
        self._app_secret = app_secret
        self._verify_token = verify_token

    def handshake(self, cb: Callback) -> Reply | None:
        """Answer Meta's ``GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`` with C."""
        if cb.method.upper() != "GET":
            return None
        mode, token, challenge = (cb.query_value(f"hub.{k}") for k in ("mode", "verify_token", "challenge"))
        if mode is None and token is None and challenge is None:
            return None
        if mode != "subscribe" or token is None or challenge is None:
            raise Forbidden("not a valid hub.mode=subscribe verification request")
        if not constant_time_equals(token, self._verify_token):
            raise Forbidden("hub.verify_token does not match")
        return Reply(200, challenge.encode("utf-8"))

    def verify(self, cb: Callback) -> None:
        """Check ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body keyed by the app secret)."""
        given = cb.header("X-Hub-Signature-256")
        if not given or not given.startswith(_SIGNATURE_PREFIX):
            raise Unauthorized("missing X-Hub-Signature-256")
        expected = hmac_hex("sha256", self._app_secret, cb.body)
        if not constant_time_equals(given[len(_SIGNATURE_PREFIX) :].lower(), expected):
            raise Unauthorized("X-Hub-Signature-256 does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """Every status and inbound message in the batch, in payload order."""
        body = as_object(cb.json(), "body")
        events: list[Event] = []
        for i, raw_entry in enumerate(as_list(body.get("entry"), "entry")):
            entry = as_object(raw_entry, f"entry[{i}]")
            for j, raw_change in enumerate(opt_list(entry, "changes", f"entry[{i}].changes")):
                where = f"entry[{i}].changes[{j}]"
                change = as_object(raw_change, where)
                if change.get("field") != "messages":
                    continue
                value = as_object(change.get("value"), f"{where}.value")
                for k, item in enumerate(opt_list(value, "statuses", f"{where}.value.statuses")):
                    at = f"{where}.value.statuses[{k}]"
                    events.append(self._status(cb, as_object(item, at), at))
                messages = opt_list(value, "messages", f"{where}.value.messages")
                if messages:
                    destination = _business_number(value, f"{where}.value.metadata")
                    for k, item in enumerate(messages):
                        at = f"{where}.value.messages[{k}]"
                        events.append(self._inbound(cb, as_object(item, at), at, destination))
        return events

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Meta only looks at the status code."""
        return OK

    def _status(self, cb: Callback, item: Mapping[str, Any], where: str) -> StatusReport:
        wamid = require_id(item, "id", f"{where}.id")
        word = opt_str(item, "status")
        if word is None:
            raise InvalidEvent("is required", field=f"{where}.status")
        error, title = _error(item, where)
        return status_event(
            provider=self.name,
            provider_message_id=wamid,
            status=STATUSES.get(word.lower(), DeliveryStatus.UNKNOWN),
            raw_status=word,
            occurred_at=parse_unix(item.get("timestamp")) or received(cb),
            id_parts=(wamid, word),
            description=title,
            error=error,
        )

    def _inbound(self, cb: Callback, item: Mapping[str, Any], where: str, destination: str) -> Inbound:
        message_id = require_id(item, "id", f"{where}.id")
        sender = opt_str(item, "from")
        if sender is None:
            raise InvalidEvent("is required", field=f"{where}.from")
        kind = opt_str(item, "type") or ""
        message_type = kind.upper()
        if not 0 < len(message_type) <= 32:
            raise InvalidEvent("is required, a short string", field=f"{where}.type")
        text, media = _content(item, kind)
        return Inbound(
            id=event_id(self.name, "in", message_id),
            occurred_at=parse_unix(item.get("timestamp")) or received(cb),
            channel=Channel.WHATSAPP,
            source=e164(sender, f"{where}.from"),
            destination=destination,
            text=clip_body(text),
            message_type=message_type,
            provider=self.name,
            provider_message_id=message_id,
            media=tuple(media),
        )


def _error(item: Mapping[str, Any], where: str) -> tuple[EventError | None, str | None]:
    """The first of a status's ``errors`` as an event error, and its title for the description."""
    errors = opt_list(item, "errors", f"{where}.errors")
    if not errors:
        return None, None
    first = as_object(errors[0], f"{where}.errors[0]")
    code, title = opt_int(first, "code"), opt_str(first, "title")
    details = opt_str(sub_object(first, "error_data"), "details")
    message = opt_str(first, "message") or title or details
    return EventError(code=None if code is None else str(code), message=clip(message)), title


def _business_number(value: Mapping[str, Any], where: str) -> str:
    """The business phone number the users wrote to, as E.164."""
    number = opt_str(sub_object(value, "metadata"), "display_phone_number")
    if number is None:
        raise InvalidEvent("is required", field=f"{where}.display_phone_number")
    return e164(number, f"{where}.display_phone_number")


def _content(item: Mapping[str, Any], kind: str) -> tuple[str, list[dict[str, Any]]]:
    """The text a person would read in the inbox, and any media references."""
    if kind == "text":
        return opt_str(sub_object(item, "text"), "body") or "", []
    if kind in MEDIA_TYPES:
        obj = sub_object(item, kind)
        media: dict[str, Any] = {"type": kind}
        for src, dst in (("id", "id"), ("mime_type", "mimeType"), ("caption", "caption")):
            if (v := opt_str(obj, src)) is not None:
                media[dst] = v
        return opt_str(obj, "caption") or "", [media]
    if kind == "button":
        return opt_str(sub_object(item, "button"), "text") or "", []
    if kind == "interactive":
        interactive = sub_object(item, "interactive")
        reply = sub_object(interactive, "button_reply") or sub_object(interactive, "list_reply")
        return opt_str(reply, "title") or "", []
    if kind == "reaction":
        return opt_str(sub_object(item, "reaction"), "emoji") or "", []
    return "", []
