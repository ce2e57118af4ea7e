"""Standard Webhooks (v1) signatures: signing what we send, verifying what upstream senders send us.

Signed content is ``{webhook-id}.{webhook-timestamp}.{raw body}``, HMAC-SHA256 keyed by the base64 secret
after ``whsec_``; ``webhook-signature`` lists ``v1,<base64>`` entries separated by spaces. The exact bytes
signed are the bytes sent. Partners verify with the ``standardwebhooks`` package unchanged (tested).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Final

from qlara_events.errors import Unauthorized

PREFIX: Final = "whsec_"
TOLERANCE_S: Final = 300


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    raw = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per key (several while a secret rotates)."""
    return " ".join(sign(k, msg_id, timestamp, body) for k in keys)


def verify(key: bytes, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: int = TOLERANCE_S) -> str:
    """Check a request's Standard Webhooks headers; return its ``webhook-id``.

    ``headers`` keys must be lower-case. Raises :class:`Unauthorized` with a reason a sender can act on.
    """
    msg_id = headers.get("webhook-id")
    ts_raw = headers.get("webhook-timestamp")
    sig_header = headers.get("webhook-signature")
    if not msg_id or not ts_raw or not sig_header:
        raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not (msg_id.isascii() and sig_header.isascii()):
        raise Unauthorized("webhook-id and webhook-signature must be ASCII")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise Unauthorized("webhook-timestamp must be integer Unix seconds") from None
    if abs(now - ts) > tolerance_s:
        raise Unauthorized(f"webhook-timestamp is more than {tolerance_s} s from the server's clock")
    expected = sign(key, msg_id, ts, body).encode()
    for candidate in sig_header.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise Unauthorized("no valid v1 signature in webhook-signature")
