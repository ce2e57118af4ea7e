"""One HTTP attempt: sign the stored bytes, POST them through the SSRF-guarded connector, classify.

No redirects are followed (a 3xx is a failure), responses are read up to a small cap and dropped, and
every attempt re-checks the URL: the guard runs on every attempt, not only at registration.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import aiohttp

from qlara_events import __version__
from qlara_events.config import Settings
from qlara_events.dispatcher.ssrf import (
    ForbiddenDestination,
    check_url,
    guarded_connector,
    parse_networks,
    ssrf_refusal,
)
from qlara_events.standard_webhooks import signature_header

USER_AGENT = f"qlara-events/{__version__}"
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


class Sender:
    """A pooled HTTP client for webhook attempts."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._allowed = parse_networks(settings.webhook_allowed_networks)
        self._session: aiohttp.ClientSession | None = None
        #: check_url's verdict per URL ("" = allowed): it depends on the URL and the settings alone. The
        #: addresses the host resolves to are still checked on every connection (the guarded connector).
        self._checked: dict[str, str] = {}

    async def start(self) -> None:
        """Open the connection pool."""
        s = self._settings
        self._session = aiohttp.ClientSession(
            # No per-host cap here: two partners behind one host (a shared SaaS receiver) must not share
            # slots. The dispatcher caps concurrency per webhook; the pool only caps the process total.
            connector=guarded_connector(allowed=self._allowed, limit_per_host=0,
                                        limit=s.webhook_concurrency_total),
            timeout=aiohttp.ClientTimeout(total=s.webhook_timeout_s),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
        )

    async def stop(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()

    async def attempt(self, url: str, keys: Sequence[bytes], delivery_id: str, body: bytes) -> AttemptResult:
        """POST ``body`` signed with every key in ``keys`` (current first)."""
        assert self._session is not None
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        refused = self._checked.get(url)
        if refused is None:
            try:
                check_url(url, require_https=self._settings.webhook_require_https, allowed=self._allowed)
                refused = ""
            except ForbiddenDestination as exc:
                refused = f"forbidden destination: {exc.message}"
            if len(self._checked) > 100_000:
                self._checked.clear()
            self._checked[url] = refused
        if refused:
            return AttemptResult(None, 0, refused, None)
        ts = int(time.time())
        headers = {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature_header(keys, delivery_id, ts, body),
            "Content-Type": "application/json",
        }
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(RESPONSE_READ_LIMIT)
                error = None
                if not 200 <= resp.status < 300:
                    error = f"HTTP {resp.status}"
                    if 300 <= resp.status < 400:
                        error += " (redirects are not followed)"
                return AttemptResult(resp.status, elapsed(), error, _retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return AttemptResult(None, elapsed(), f"timed out after {self._settings.webhook_timeout_s:g} s", None)
        except aiohttp.ClientError as exc:
            refusal = ssrf_refusal(exc)
            if refusal is not None:
                return AttemptResult(None, elapsed(), f"forbidden destination: {refusal.message}", None)
            return AttemptResult(None, elapsed(), f"{type(exc).__name__}: {exc}"[:500], None)
