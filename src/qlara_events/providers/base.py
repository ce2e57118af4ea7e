"""What every provider module implements: verify a callback, then normalise it to canonical events.

Provider modules are pure: they see a :class:`Callback` (the raw request, already read) and return
canonical events or raise :class:`~qlara_events.errors.Unauthorized` / :class:`~qlara_events.errors.InvalidEvent`.
The ingress owns HTTP, Kafka and metrics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
from collections.abc import Mapping, Sequence
from typing import Final, Protocol
from urllib.parse import parse_qsl

import orjson

from qlara_events.domain.events import Event
from qlara_events.errors import InvalidEvent

#: Fields a form-encoded callback may carry: Twilio's richest (an MMS with ten media) has about 60.
MAX_FORM_FIELDS: Final = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Callback:
    """A provider's HTTP request as the ingress read it."""

    method: str
    #: The URL the provider called, rebuilt from ``QLARA_PUBLIC_BASE_URL`` + path + query string
    #: (what URL-signing providers such as Twilio sign).
    url: str
    #: Header names lower-cased.
    headers: Mapping[str, str]
    #: Query parameters in order, repeated names kept.
    query: Sequence[tuple[str, str]]
    body: bytes
    #: Media type without parameters, lower-cased (``application/json``), or "".
    content_type: str
    received_at: dt.datetime
    #: The parsed form, kept after the first :meth:`form` (verification and normalisation both read it).
    _form: list[tuple[str, str]] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        return self.headers.get(name.lower())

    def query_value(self, name: str) -> str | None:
        """The first query parameter of that name."""
        for k, v in self.query:
            if k == name:
                return v
        return None

    def form(self) -> list[tuple[str, str]]:
        """The body decoded as ``application/x-www-form-urlencoded`` (strictly: bad encoding is InvalidEvent).

        Parsed once per callback, and refused before any parsing past :data:`MAX_FORM_FIELDS` fields
        (``parse_qsl`` counts the separators first), so an unauthenticated form costs little to refuse.
        """
        form = self._form
        if form is None:
            try:
                text = self.body.decode("utf-8")
                form = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(self.body),
                                 max_num_fields=MAX_FORM_FIELDS)
            except UnicodeDecodeError:
                raise InvalidEvent("body is not valid application/x-www-form-urlencoded") from None
            except ValueError as exc:
                if "Max number of fields" in str(exc):
                    raise InvalidEvent(f"a form callback has at most {MAX_FORM_FIELDS} fields") from None
                raise InvalidEvent("body is not valid application/x-www-form-urlencoded") from None
            object.__setattr__(self, "_form", form)
        return list(form)

    def json(self) -> object:
        """The body decoded as JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise InvalidEvent("body is not valid JSON") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A response a provider expects instead of the default empty 200 (handshakes, Jasmin's ACK)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"


class Provider(Protocol):
    """One upstream provider's callback dialect."""

    #: The provider's name: the endpoint ``/ingest/v1/providers/{name}`` and ``provider`` in events.
    name: str
    #: The largest body this provider sends; a longer one is refused with 413 before it is read.
    max_body_bytes: int

    def handshake(self, cb: Callback) -> Reply | None:
        """Answer a subscription/verification request, or return None when ``cb`` is not one.

        Raises Unauthorized when it is a handshake with the wrong token.
        """

    def verify(self, cb: Callback) -> None:
        """Raise :class:`~qlara_events.errors.Unauthorized` unless the callback is authentic."""

    def normalize(self, cb: Callback) -> list[Event]:
        """The canonical events in an authentic callback (possibly none, e.g. RBM IS_TYPING).

        Raises :class:`~qlara_events.errors.InvalidEvent` for anything it cannot read; never another
        exception, whatever the bytes.
        """

    def accepted(self, events: Sequence[Event]) -> Reply:
        """The reply once every event is durably in Kafka."""


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets or signatures without leaking where they differ.

    Header and query values that were not UTF-8 reach us with surrogate escapes; they are compared as the
    bytes that were sent (so they simply do not match) instead of failing to encode.
    """
    ab = a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a
    bb = b.encode("utf-8", "surrogateescape") if isinstance(b, str) else b
    return hmac.compare_digest(ab, bb)


OK = Reply()
