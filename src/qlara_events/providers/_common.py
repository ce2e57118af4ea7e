"""Helpers shared by the provider modules: defensive field access, timestamps, event ids and HMACs.

Everything here is pure. Field accessors raise :class:`InvalidEvent` (never ``KeyError``/``TypeError``),
so a provider module can walk untrusted JSON without a ``try`` around every lookup.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson

from qlara_events.domain.events import MAX_ID_LENGTH, MAX_TEXT_LENGTH, EventError, StatusReport
from qlara_events.domain.status import DESCRIPTIONS, DeliveryStatus
from qlara_events.errors import InvalidEvent
from qlara_events.providers.base import Callback

#: ``parse_event`` caps free-text fields (description, raw status, error message) at this length.
MAX_SHORT_TEXT: Final = 2000

JsonObject = dict[str, Any]

# ------------------------------------------------------------------------------------------- field access


def as_object(value: object, what: str) -> JsonObject:
    """``value`` as a JSON object, else InvalidEvent naming ``what``."""
    if not isinstance(value, dict):
        raise InvalidEvent("must be a JSON object", field=what)
    return value


def as_list(value: object, what: str) -> list[Any]:
    """``value`` as a JSON array, else InvalidEvent naming ``what``."""
    if not isinstance(value, list):
        raise InvalidEvent("must be a JSON array", field=what)
    return value


def opt_list(obj: Mapping[str, Any], key: str, what: str) -> list[Any]:
    """An optional array member: absent or null is empty."""
    value = obj.get(key)
    return [] if value is None else as_list(value, what)


def sub_object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A nested object, or an empty one when absent or not an object (for best-effort optional content)."""
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    """A member that is a non-empty string, else None (wrong types are treated as absent)."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def require_id(obj: Mapping[str, Any], key: str, what: str | None = None) -> str:
    """A member usable as an event identifier: a non-empty string of at most 200 characters."""
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(
            f"is required, a non-empty string of at most {MAX_ID_LENGTH} characters", field=what or key
        )
    return value


def opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    """A member that is an integer or a string of digits, else None."""
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def clip(text: str | None, limit: int = MAX_SHORT_TEXT) -> str | None:
    """``text`` shortened to what the canonical schema accepts (descriptions are advisory)."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_body(text: str) -> str:
    """Inbound message text shortened to the canonical maximum."""
    return text[:MAX_TEXT_LENGTH]


def params(pairs: Iterable[tuple[str, str]], *, refuse_nul: bool = True) -> dict[str, str]:
    """Form/query pairs as a dict; the first occurrence of a repeated name wins.

    A NUL anywhere is refused with the field's name: Postgres text cannot hold it, so an event carrying
    one could never be projected (the projector would set it aside as unreadable). Signature checks read
    the fields with ``refuse_nul=False``: an authentic callback with a NUL is refused by normalisation,
    after the signature, so it is kept in ``qlara.ingest-rejected`` like any other unreadable payload.
    """
    out: dict[str, str] = {}
    for key, value in pairs:
        if refuse_nul and ("\x00" in value or "\x00" in key):
            raise InvalidEvent("must not contain NUL characters", field=key.replace("\x00", "\\0")[:64])
        out.setdefault(key, value)
    return out


def request_params(cb: Callback) -> list[tuple[str, str]]:
    """The parameters of a form-style callback: the query string for GET, the form body otherwise."""
    return list(cb.query) if cb.method.upper() == "GET" else cb.form()


def decode_json_object(raw: bytes, what: str) -> JsonObject:
    """``raw`` decoded as a JSON object (strict UTF-8), else InvalidEvent."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidEvent("is not valid JSON", field=what) from None
    return as_object(value, what)


def b64decode(text: str, what: str) -> bytes:
    """Standard or URL-safe base64 (padding optional), strictly validated."""
    altchars = b"-_" if ("-" in text or "_" in text) else None
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent("is not valid base64", field=what) from None


# --------------------------------------------------------------------------------------------- timestamps

# RFC 3339 allows any number of fractional digits; Python keeps microseconds, so drop the rest.
_FRACTION = re.compile(r"(\.\d{6})\d+")


def _utc(value: dt.datetime) -> dt.datetime | None:
    try:
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return None


def parse_iso(text: object) -> dt.datetime | None:
    """An ISO 8601 / RFC 3339 timestamp (``Z``, ``+00:00`` or ``+0000``; naive means UTC), or None."""
    if not isinstance(text, str) or not 10 <= len(text) <= 64 or not text.isascii():
        return None
    try:
        parsed = dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()))
    except ValueError:
        return None
    return _utc(parsed)


def parse_smpp_date(text: object) -> dt.datetime | None:
    """An SMPP-style ``YYMMDDhhmm[ss]`` date (no zone: UTC assumed), or None."""
    if not isinstance(text, str) or len(text) not in (10, 12) or not (text.isascii() and text.isdigit()):
        return None
    fmt = "%y%m%d%H%M%S" if len(text) == 12 else "%y%m%d%H%M"
    try:
        return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def parse_unix(text: object) -> dt.datetime | None:
    """Unix seconds (an integer or a string of digits), or None."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    elif isinstance(text, str) and 0 < len(text) <= 12 and text.isascii() and text.isdigit():
        seconds = int(text)
    else:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def received(cb: Callback) -> dt.datetime:
    """When the ingress read the callback, in UTC: the fallback for providers that send no event time."""
    return _utc(cb.received_at) or cb.received_at


# ----------------------------------------------------------------------------------------------- events


def event_id(provider: str, *parts: str) -> str:
    """A deterministic event id: a provider retry of the same callback gets the same id.

    Ids longer than the canonical limit are replaced by a SHA-256 of the full id, which is still
    deterministic and still unique in practice.
    """
    joined = ":".join((provider, *parts))
    if len(joined) <= MAX_ID_LENGTH:
        return joined
    return f"{provider}:sha256:{hashlib.sha256(joined.encode('utf-8', 'surrogatepass')).hexdigest()}"


def status_event(
    *,
    provider: str,
    provider_message_id: str,
    status: DeliveryStatus,
    raw_status: str,
    occurred_at: dt.datetime,
    id_parts: Sequence[str],
    description: str | None = None,
    error: EventError | None = None,
) -> StatusReport:
    """A provider receipt as a canonical :class:`StatusReport` with the shared conventions applied."""
    for what, text in (("status", raw_status), ("id", "".join(id_parts)), ("description", description or "")):
        if "\x00" in text:
            raise InvalidEvent("must not contain NUL characters", field=what)
    if error is not None and "\x00" in f"{error.code}{error.message or ''}":
        raise InvalidEvent("must not contain NUL characters", field="error")
    return StatusReport(
        id=event_id(provider, *id_parts),
        occurred_at=occurred_at,
        status=status,
        provider=provider,
        provider_message_id=provider_message_id,
        status_code=status.code,
        description=clip(description) or DESCRIPTIONS[status],
        error=error,
        raw_status=clip(raw_status),
    )


def e164(number: str, what: str) -> str:
    """A phone number as ``+digits`` (WhatsApp sends ``16315551234``, display numbers may have spaces)."""
    digits = "".join(ch for ch in number if ch.isascii() and ch.isdigit())
    if not 4 <= len(digits) <= 20:
        raise InvalidEvent("is not a phone number", field=what)
    return "+" + digits


# ------------------------------------------------------------------------------------------ signatures


def hmac_digest(algorithm: str, key: str, message: bytes) -> bytes:
    """The raw HMAC of ``message`` keyed by ``key`` (UTF-8)."""
    return hmac.digest(key.encode("utf-8"), message, algorithm)  # one-shot: OpenSSL's C path, no HMAC object


def hmac_hex(algorithm: str, key: str, message: bytes) -> str:
    """The lower-case hex HMAC of ``message``."""
    return hmac.digest(key.encode("utf-8"), message, algorithm).hex()


def hmac_b64(algorithm: str, key: str, message: bytes) -> str:
    """The base64 HMAC of ``message``."""
    return base64.b64encode(hmac_digest(algorithm, key, message)).decode("ascii")


def basic_auth_password(header: str | None) -> str | None:
    """The password of an HTTP Basic ``Authorization`` header, or None when absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


_DEFAULT_PORTS: Final = {"https": 443, "http": 80}


def url_port_variants(url: str) -> Iterator[str]:
    """``url`` as given, then (only if asked for) with the default port toggled.

    Twilio signs the URL as it dialled it; behind a proxy the rebuilt URL may gain or lose ``:443``,
    so its own validators try both spellings (twilio-python ``RequestValidator.validate``). The second
    spelling is built lazily: a signature that matches the URL as given never pays for it.
    """
    yield url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    host = parts.hostname
    if default is None or host is None or parts.username or parts.password:
        return
    host = f"[{host}]" if ":" in host else host
    if port is None:
        yield urlunsplit(parts._replace(netloc=f"{host}:{default}"))
    elif port == default:
        yield urlunsplit(parts._replace(netloc=host))
