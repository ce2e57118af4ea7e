"""Vonage SMS API delivery receipts (GET query, POST form or POST JSON; optional ``sig`` signing).

``status`` → Qlara status: accepted, buffered → SENT; delivered → DELIVERED; expired → EXPIRED;
failed, rejected → ERROR; unknown (and any word Vonage adds later) → UNKNOWN, kept in history only.
A non-zero ``err-code`` becomes the event error, described from Vonage's published code table.
Multi-part messages get one receipt per part, each under its own ``messageId``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Final

from qlara_events.domain.events import Event, EventError
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    decode_json_object,
    hmac_hex,
    opt_int,
    params,
    parse_iso,
    parse_smpp_date,
    received,
    require_id,
    status_event,
)
from qlara_events.providers.base import OK, Callback, Reply, constant_time_equals

METHODS: Final = ("md5hash", "md5", "sha1", "sha256", "sha512")
#: Signed requests older or newer than this (against the ingress clock) are replays or badly skewed.
MAX_SKEW_SECONDS: Final = 300

STATUSES: Final[Mapping[str, DeliveryStatus]] = {
    "accepted": DeliveryStatus.SENT,
    "buffered": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "expired": DeliveryStatus.EXPIRED,
    "failed": DeliveryStatus.ERROR,
    "rejected": DeliveryStatus.ERROR,
    "unknown": DeliveryStatus.UNKNOWN,
}

#: Vonage's delivery-receipt ``err-code`` table.
ERROR_TEXT: Final[Mapping[str, str]] = {
    "1": "Unknown",
    "2": "Absent Subscriber - Temporary",
    "3": "Absent Subscriber - Permanent",
    "4": "Call Barred by User",
    "5": "Portability Error",
    "6": "Anti-Spam Rejection",
    "7": "Handset Busy",
    "8": "Network Error",
    "9": "Illegal Number",
    "10": "Illegal Message",
    "11": "Unroutable",
    "12": "Destination Unreachable",
    "13": "Subscriber Age Restriction",
    "14": "Number Blocked by Carrier",
    "15": "Prepaid Insufficient Funds",
    "16": "Gateway Quota Exceeded",
    "50": "Entity Filter",
    "51": "Header Filter",
    "52": "Content Filter",
    "53": "Consent Filter",
    "54": "Regulation Error",
    "99": "General Error",
}


def signature(secret: str, method: str, fields: Mapping[str, str]) -> str:
    """Vonage's ``sig`` (lower-case hex) over every parameter except ``sig``.

    The signed string is ``&key=value...`` sorted by key, with ``&`` and ``=`` inside values replaced
    by ``_``; ``md5hash`` appends the secret and takes MD5, the other methods are HMACs keyed by it.
    """
    signed = "".join(
        f"&{key}={value.replace('&', '_').replace('=', '_')}"
        for key, value in sorted(fields.items())
        if key != "sig"
    )
    if method == "md5hash":
        return hashlib.md5((signed + secret).encode("utf-8")).hexdigest()
    return hmac_hex(method, secret, signed.encode("utf-8"))


class VonageProvider:
    """Vonage's delivery-receipt dialect."""

    name = "vonage"
    #: Receipts and inbound messages are flat forms or JSON objects of a few hundred bytes.
    max_body_bytes = 64 * 1024

    def __init__(self, *, signature_secret: str | None, signature_method: str = "md5hash") -> None:
        method = signature_method.lower()
        if method not in METHODS:
            raise ValueError(f"signature_method must be one of {', '.join(METHODS)}")
        self._secret = signature_secret
        self._method = method

    def handshake(self, cb: Callback) -> Reply | None:
        """Vonage has no subscription handshake."""
        return None

    def verify(self, cb: Callback) -> None:
        """Check ``sig`` and the freshness of ``timestamp``; accept everything when no secret is set."""
        if self._secret is None:
            return
        fields = _fields(cb, refuse_nul=False)  # a NUL is normalisation's to refuse, after the signature
        given, stamp = fields.get("sig"), opt_int(fields, "timestamp")
        if not given or stamp is None:
            raise Unauthorized("missing sig or timestamp")
        if abs(stamp - received(cb).timestamp()) > MAX_SKEW_SECONDS:
            raise Unauthorized("timestamp is too far from the current time")
        expected = signature(self._secret, self._method, fields)
        if not constant_time_equals(given.lower(), expected):
            raise Unauthorized("sig does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """One status report per receipt."""
        fields = _fields(cb)
        message_id = require_id(fields, "messageId")
        word = fields.get("status")
        if not word:
            raise InvalidEvent("is required", field="status")
        code = fields.get("err-code") or ""
        failed = code not in ("", "0")
        when = parse_iso(fields.get("message-timestamp")) or parse_smpp_date(fields.get("scts"))
        return [
            status_event(
                provider=self.name,
                provider_message_id=message_id,
                status=STATUSES.get(word.lower(), DeliveryStatus.UNKNOWN),
                raw_status=word,
                occurred_at=when or received(cb),
                id_parts=(message_id, word, code),
                description=ERROR_TEXT.get(code) if failed else None,
                error=EventError(code=code, message=ERROR_TEXT.get(code)) if failed else None,
            )
        ]

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Vonage only looks at the status code."""
        return OK


def _fields(cb: Callback, *, refuse_nul: bool = True) -> dict[str, str]:
    """The receipt's parameters from the query (GET), a JSON body or a form body."""
    if cb.method.upper() == "GET":
        return params(cb.query, refuse_nul=refuse_nul)
    if cb.content_type == "application/json" or (not cb.content_type and cb.body.lstrip()[:1] == b"{"):
        body = decode_json_object(cb.body, "body")
        return params(((key, _scalar(value, key)) for key, value in body.items()), refuse_nul=refuse_nul)
    return params(cb.form(), refuse_nul=refuse_nul)


def _scalar(value: object, key: str) -> str:
    """A JSON member as the string Vonage signs (receipts are flat; nested values are not Vonage's)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return ""
    raise InvalidEvent("must be a string or a number", field=key)
