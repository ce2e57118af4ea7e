"""Test helpers: build provider callbacks and sign them the way each provider does.

The signers are written independently of the provider modules (and pinned to the providers' published
test vectors in the tests), so a test cannot pass just because both sides share a bug.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

import orjson

from qlara_events.providers.base import Callback

RECEIVED_AT = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
BASE_URL = "https://events.qlara.example/ingest/v1/providers"


def make_callback(
    *,
    method: str = "POST",
    url: str = BASE_URL,
    headers: Mapping[str, str] | None = None,
    query: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str = "",
    received_at: dt.datetime = RECEIVED_AT,
) -> Callback:
    """A :class:`Callback` as the ingress would build it (header names lower-cased)."""
    if query and "?" not in url:
        url = f"{url}?{urlencode(list(query))}"
    return Callback(
        method=method,
        url=url,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        query=list(query),
        body=body,
        content_type=content_type,
        received_at=received_at,
    )


def form_callback(
    pairs: Sequence[tuple[str, str]],
    *,
    url: str = BASE_URL,
    headers: Mapping[str, str] | None = None,
    query: Sequence[tuple[str, str]] = (),
    received_at: dt.datetime = RECEIVED_AT,
) -> Callback:
    """A form-encoded POST."""
    return make_callback(
        url=url,
        headers=headers,
        query=query,
        body=urlencode(list(pairs)).encode(),
        content_type="application/x-www-form-urlencoded",
        received_at=received_at,
    )


def json_callback(
    payload: object,
    *,
    url: str = BASE_URL,
    headers: Mapping[str, str] | None = None,
    query: Sequence[tuple[str, str]] = (),
    received_at: dt.datetime = RECEIVED_AT,
) -> Callback:
    """A JSON POST (``payload`` may already be bytes)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return make_callback(
        url=url,
        headers=headers,
        query=query,
        body=body,
        content_type="application/json",
        received_at=received_at,
    )


# ---------------------------------------------------------------------------------------------- signers


def twilio_signature(auth_token: str, url: str, form: Sequence[tuple[str, str]]) -> str:
    """Twilio's documented algorithm: URL, then each parameter name (sorted) followed by its sorted values."""
    signed = url
    for name in sorted({name for name, _ in form}):
        for value in sorted({v for n, v in form if n == name}):
            signed += name + value
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def vonage_signature(secret: str, method: str, fields: Mapping[str, str]) -> str:
    """Vonage's ``sig``: ``&k=v`` over the sorted fields, MD5 with the secret appended or an HMAC."""
    signed = ""
    for key in sorted(k for k in fields if k != "sig"):
        signed += "&" + key + "=" + fields[key].replace("&", "_").replace("=", "_")
    if method == "md5hash":
        return hashlib.md5(signed.encode() + secret.encode()).hexdigest()
    return hmac.new(secret.encode(), signed.encode(), getattr(hashlib, method)).hexdigest()


def whatsapp_signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def rbm_envelope(data: object, *, message_id: str = "1234567890") -> tuple[bytes, bytes]:
    """A Pub/Sub push envelope around ``data`` (JSON-encoded, then base64): (envelope body, data bytes)."""
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    envelope = {
        "message": {
            "data": base64.b64encode(raw).decode(),
            "messageId": message_id,
            "publishTime": "2024-05-01T11:59:59.123Z",
        },
        "subscription": "projects/rbm-agent/subscriptions/rbm-agent-sub",
    }
    return orjson.dumps(envelope), raw


def rbm_signature(client_token: str, data: bytes) -> str:
    """The ``X-Goog-Signature`` header value: base64 HMAC-SHA512 of the decoded data."""
    return base64.b64encode(hmac.new(client_token.encode(), data, hashlib.sha512).digest()).decode()


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
