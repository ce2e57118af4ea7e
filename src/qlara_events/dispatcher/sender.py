"""One HTTP attempt: sign the stored bytes, POST them over SSRF-checked connections (``http1.py``), classify.

No redirects are followed (a 3xx is a failure) and responses are read up to a small cap and dropped. The
guard runs at delivery, not only at registration: the URL's form is checked (once per distinct URL), and
every new connection resolves the host and checks every address it connects to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

import yarl

from qlara_events import __version__
from qlara_events.config import Settings
from qlara_events.dispatcher.http1 import Http1Pool, HttpError
from qlara_events.dispatcher.ssrf import (
    GENERIC_REFUSAL,
    UNRESOLVABLE,
    ForbiddenDestination,
    check_url,
    parse_networks,
    webhook_ports,
)
from qlara_events.logs import get_logger
from qlara_events.standard_webhooks import signature_header

log = get_logger("dispatcher")

USER_AGENT = f"qlara-events/{__version__}"
#: What the delivery log (read by the partner) says when the connection or the answer failed. Which way it failed
#: (refused, reset, TLS, not HTTP) would tell whether something listens on the host's port, so it is only in the
#: server log.
CONNECTION_FAILED = "the connection to the webhook URL failed or its answer was not valid HTTP"
UNRESOLVED = "the webhook URL's host could not be resolved"
RESPONSE_READ_LIMIT = 16 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptResult:
    """What happened on the wire."""

    status_code: int | None
    latency_ms: int
    error: str | None
    retry_after: float | None

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP-date: rare from webhook receivers; the schedule applies


def _public(exc: ForbiddenDestination) -> str:
    """What a partner may read about a refused destination: a form problem as it is, never an address."""
    return GENERIC_REFUSAL if exc.address is not None or exc.reason == UNRESOLVABLE else exc.message


class Sender:
    """Signs and POSTs webhook attempts over pooled keep-alive connections (``http1.py``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._allowed = parse_networks(settings.webhook_allowed_networks)
        self._ports = webhook_ports(settings.webhook_allowed_ports)
        self._pool: Http1Pool | None = None
        #: check_url's verdict per URL (the parsed URL, or the refusal): it depends on the URL and the settings
        #: alone. The addresses the host resolves to are checked on every new connection.
        self._checked: dict[str, yarl.URL | str] = {}

    async def start(self) -> None:
        """Open the connection pool."""
        self._pool = Http1Pool(allowed=self._allowed, read_limit=RESPONSE_READ_LIMIT, user_agent=USER_AGENT)

    async def stop(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            self._pool.close()

    def _url(self, url: str) -> yarl.URL | str:
        verdict = self._checked.get(url)
        if verdict is None:
            try:
                verdict = check_url(url, require_https=self._settings.webhook_require_https, allowed=self._allowed,
                                    ports=self._ports)
            except ForbiddenDestination as exc:
                verdict = f"forbidden destination: {_public(exc)}"
            if len(self._checked) > 100_000:
                self._checked.clear()
            self._checked[url] = verdict
        return verdict

    async def attempt(self, url: str, keys: Sequence[bytes], delivery_id: str, body: bytes) -> AttemptResult:
        """POST ``body`` signed with every key in ``keys`` (current first)."""
        assert self._pool is not None
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        target = self._url(url)
        if isinstance(target, str):
            return AttemptResult(None, 0, target, None)
        ts = int(time.time())
        headers = (
            ("Content-Type", "application/json"),
            ("webhook-id", delivery_id),
            ("webhook-timestamp", str(ts)),
            ("webhook-signature", signature_header(keys, delivery_id, ts, body)),
        )
        try:
            async with asyncio.timeout(self._settings.webhook_timeout_s):
                answer = await self._pool.post(target, headers, body)
        except TimeoutError:
            return AttemptResult(None, elapsed(), f"timed out after {self._settings.webhook_timeout_s:g} s", None)
        except ForbiddenDestination as exc:
            log.warning("webhook_attempt_refused", delivery_id=delivery_id, host=target.host, port=target.port,
                        reason=exc.reason, address=exc.address, detail=exc.message)
            if exc.reason == UNRESOLVABLE:
                return AttemptResult(None, elapsed(), f"DNS: {UNRESOLVED}", None)
            return AttemptResult(None, elapsed(), f"forbidden destination: {_public(exc)}", None)
        except (HttpError, OSError) as exc:
            log.warning("webhook_attempt_failed", delivery_id=delivery_id, host=target.host, port=target.port,
                        error=f"{type(exc).__name__}: {exc}"[:500])
            return AttemptResult(None, elapsed(), CONNECTION_FAILED, None)
        error = None
        if not 200 <= answer.status < 300:
            error = f"HTTP {answer.status}"
            if 300 <= answer.status < 400:
                error += " (redirects are not followed)"
        return AttemptResult(answer.status, elapsed(), error, _retry_after(answer.retry_after))
