"""Twilio Messaging status callbacks and inbound-message webhooks (form-encoded, ``X-Twilio-Signature``).

``MessageStatus`` → Qlara status:

=========================================  =========  ================================================
MessageStatus                              status     note
=========================================  =========  ================================================
accepted, scheduled, queued, sending,      SENT       still on Twilio's or the carrier's side
sent
partially_delivered                        RECEIVED   some parts/recipients got it: more than a carrier
                                                      ack, not a full delivery; a later ``delivered`` /
                                                      ``undelivered`` settles it
delivered                                  DELIVERED
read                                       READ
failed, undelivered, canceled              ERROR      ``ErrorCode`` becomes the event error
receiving, received                        (none)     inbound states: ``received`` with a ``Body`` is an
                                                      :class:`Inbound`, otherwise nothing
anything else                              UNKNOWN    Twilio adds states without notice; kept in
                                                      history, never moves the projection
=========================================  =========  ================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from qlara_events.domain.events import MAX_ID_LENGTH, Event, EventError, Inbound
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    clip,
    clip_body,
    event_id,
    hmac_b64,
    opt_int,
    params,
    parse_smpp_date,
    received,
    request_params,
    require_id,
    status_event,
    url_port_variants,
)
from qlara_events.providers.base import OK, Callback, Reply, constant_time_equals

STATUSES: Final[Mapping[str, DeliveryStatus]] = {
    "accepted": DeliveryStatus.SENT,
    "scheduled": DeliveryStatus.SENT,
    "queued": DeliveryStatus.SENT,
    "sending": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "partially_delivered": DeliveryStatus.RECEIVED,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.READ,
    "failed": DeliveryStatus.ERROR,
    "undelivered": DeliveryStatus.ERROR,
    "canceled": DeliveryStatus.ERROR,
}
INBOUND_STATES: Final = frozenset({"receiving", "received"})

# Twilio relays WhatsApp and RCS through the same webhooks, marking addresses with a scheme prefix.
_ADDRESS_CHANNELS: Final[Mapping[str, Channel]] = {"whatsapp": Channel.WHATSAPP, "rcs": Channel.RCS}
_MAX_MEDIA: Final = 10  # Twilio's own limit per message


def signature(auth_token: str, url: str, form: Sequence[tuple[str, str]]) -> str:
    """Twilio's ``X-Twilio-Signature`` for a request to ``url`` with these POST parameters.

    Parameters are sorted by name, then by value for repeated names, each distinct pair appended once as
    ``name + value``: what Twilio's helper libraries do and what their published test vectors pin down.
    (Sorting the concatenated ``name + value`` strings instead gives a different order when one name is a
    prefix of another, e.g. ``Sid``/``SidAccount``, and fails Twilio's vectors.)
    """
    return _signature(auth_token, url, _signed_params(form))


def _signed_params(form: Sequence[tuple[str, str]]) -> bytes:
    """What Twilio appends to the URL before signing (computed once for every URL variant tried)."""
    return "".join(key + value for key, value in sorted(set(form))).encode("utf-8")


def _signature(auth_token: str, url: str, signed_params: bytes) -> str:
    return hmac_b64("sha1", auth_token, url.encode("utf-8") + signed_params)


class TwilioProvider:
    """Twilio's callback dialect."""

    name = "twilio"
    #: A status callback is under 1 KiB; an inbound MMS with its body percent-encoded stays under 32 KiB.
    max_body_bytes = 64 * 1024

    def __init__(self, *, auth_token: str) -> None:
        self._auth_token = auth_token

    def handshake(self, cb: Callback) -> Reply | None:
        """Twilio has no subscription handshake."""
        return None

    def verify(self, cb: Callback) -> None:
        """Check ``X-Twilio-Signature`` over the URL and every POST parameter (GET: the URL alone)."""
        given = cb.header("X-Twilio-Signature")
        if not given:
            raise Unauthorized("missing X-Twilio-Signature")
        signed_params = b"" if cb.method.upper() == "GET" else _signed_params(cb.form())
        if not any(
            constant_time_equals(given, _signature(self._auth_token, url, signed_params))
            for url in url_port_variants(cb.url)
        ):
            raise Unauthorized("X-Twilio-Signature does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """One status report, one inbound message, or nothing (an inbound ``receiving`` state)."""
        form = params(request_params(cb))
        # Status callbacks carry both names; the inbound-message webhook only the older Sms* ones.
        word = form.get("MessageStatus") or form.get("SmsStatus")
        if not word:
            raise InvalidEvent("is required", field="MessageStatus")
        sid = require_id(form, "MessageSid" if form.get("MessageSid") else "SmsSid", "MessageSid")
        state = word.lower()
        if state in INBOUND_STATES:
            if state == "received" and "Body" in form:
                return [self._inbound(cb, form, sid)]
            return []
        status = STATUSES.get(state, DeliveryStatus.UNKNOWN)
        code = form.get("ErrorCode")
        message = form.get("ErrorMessage") or None
        error = EventError(code=code, message=clip(message)) if code and code != "0" else None
        return [
            status_event(
                provider=self.name,
                provider_message_id=sid,
                status=status,
                raw_status=word,
                occurred_at=parse_smpp_date(form.get("RawDlrDoneDate")) or received(cb),
                id_parts=(sid, word),
                description=message,
                error=error,
            )
        ]

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Twilio only looks at the status code."""
        return OK

    def _inbound(self, cb: Callback, form: Mapping[str, str], sid: str) -> Inbound:
        channel, source = _address(require_id(form, "From"), "From")
        _, destination = _address(require_id(form, "To"), "To")
        media = _media(form)
        return Inbound(
            id=event_id(self.name, "in", sid),
            occurred_at=received(cb),
            channel=channel,
            source=source,
            destination=destination,
            text=clip_body(form.get("Body", "")),
            message_type=str(media[0]["type"]).upper() if media else "TEXT",
            provider=self.name,
            provider_message_id=sid,
            media=tuple(media),
        )


def _address(value: str, what: str) -> tuple[Channel, str]:
    """The channel an address belongs to and the bare address (``whatsapp:+1555...`` → WHATSAPP, +1555...)."""
    scheme, sep, rest = value.partition(":")
    channel = _ADDRESS_CHANNELS.get(scheme.lower()) if sep else None
    if channel is None:
        return Channel.SMS, value
    if not rest or len(rest) > MAX_ID_LENGTH:
        raise InvalidEvent("is not an address", field=what)
    return channel, rest


def _media(form: Mapping[str, str]) -> list[dict[str, Any]]:
    """MMS attachments (``MediaUrlN`` / ``MediaContentTypeN``)."""
    count = min(opt_int(form, "NumMedia") or 0, _MAX_MEDIA)
    out: list[dict[str, Any]] = []
    for i in range(count):
        url = form.get(f"MediaUrl{i}")
        if not url:
            continue
        mime = form.get(f"MediaContentType{i}") or "application/octet-stream"
        kind = mime.partition("/")[0].lower()
        if not (kind.isascii() and kind.isalpha() and len(kind) <= 20):
            kind = "file"
        out.append({"type": kind, "url": url, "mimeType": mime})
    return out
