"""API-key authentication: ``X-API-Key`` (or HTTP Basic with the key as password), scoped to one account.

A request normally costs no database round trip before its handler: the key is resolved from the process's
key cache (store/keycache.py: invalidated by LISTEN/NOTIFY, trusted only while its listener is confirmed
healthy) and its rate limit decided in memory (store/ratesync.py: reconciled in the background). A key the
cache does not hold, or whose shared rate-limit windows this process has not read lately, is looked up
together with those windows in one read. ``QLARA_KEY_CACHE_CHECK_MS=0`` turns the cache off, and
``QLARA_RATE_LIMIT_SYNC_MS=0`` counts every request in Postgres as it comes (exact across processes, one
write per request).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Final

import asyncpg
import structlog
from aiohttp import web

from qlara_events.api import clientip
from qlara_events.api.throttle import FailureThrottle
from qlara_events.errors import Forbidden, TooManyRequests, Unauthorized
from qlara_events.http import Handler
from qlara_events.metrics import KEY_LOOKUPS
from qlara_events.store import ratelimit
from qlara_events.store.accounts import IPNetwork, Principal, authenticate_with_windows, hash_key
from qlara_events.store.keycache import KeyCache
from qlara_events.store.ratesync import LocalLimiter

PREFIX: Final = "/partner-gateway/v1"
PUBLIC_PATHS: Final = frozenset({f"{PREFIX}/openapi.json"})
POOL: Final = web.AppKey("api_pool", asyncpg.Pool)
PLANS: Final = web.AppKey("rate_limit_plans", dict[str, tuple[int, int]])
VERDICT: Final = web.RequestKey("rate_limit", ratelimit.Verdict)
PRINCIPAL: Final = web.RequestKey("principal", Principal)
THROTTLE: Final = web.AppKey("auth_failure_throttle", FailureThrottle)
KEYS: Final = web.AppKey("api_key_cache", KeyCache)
LIMITER: Final = web.AppKey("rate_limiter", LocalLimiter)
TRUSTED_PROXIES: Final = web.AppKey("trusted_proxies", tuple[IPNetwork, ...])
_FROM_CACHE: Final = KEY_LOOKUPS.labels("cache")
_FROM_DATABASE: Final = KEY_LOOKUPS.labels("database")


def get_pool(app: web.Application) -> asyncpg.Pool:
    """The API's Postgres pool."""
    return app[POOL]


def principal(request: web.Request) -> Principal:
    """The authenticated caller of a request (set by the middleware)."""
    p: Principal = request[PRINCIPAL]
    return p


def require_channel(request: web.Request, channel: str) -> None:
    """403 when the caller's key is restricted to other channels."""
    ops = principal(request).operations
    if ops is not None and channel not in ops:
        raise Forbidden(f"this API key is not allowed to use {channel}")


def require_unrestricted(request: web.Request, what: str) -> None:
    """403 unless the caller's key may use every channel: ``what`` is account-wide (keys, the webhook)."""
    if principal(request).operations is not None:
        raise Forbidden(f"{what} needs an unrestricted API key (one created without operations)")


def key_channels(request: web.Request) -> list[str] | None:
    """The channels the caller's key is restricted to (sorted), or None when it may use all of them."""
    ops = principal(request).operations
    return None if ops is None else sorted(ops)


def _raw_key(request: web.Request) -> str | None:
    """The key a request offers. Keys are ASCII: other bytes (a header that was not UTF-8 arrives with
    surrogate escapes) are an invalid key, not an error further down."""
    key = request.headers.get("X-API-Key")
    if key:
        if not key.isascii():
            raise Unauthorized("invalid API key")
        return key.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            _, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, ValueError):  # -- UnicodeDecodeError and non-ASCII input are ValueErrors
            raise Unauthorized("malformed Basic credentials") from None
        if not password.isascii():
            raise Unauthorized("invalid API key")
        return password or None
    return None


@web.middleware
async def api_key_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every Platform API request; others pass through untouched."""
    if not request.path.startswith(PREFIX + "/") or request.path in PUBLIC_PATHS:
        return await handler(request)
    raw = _raw_key(request)
    if not raw:
        raise Unauthorized("missing API key: send it in the X-API-Key header")
    if len(raw) > 256:
        raise Unauthorized("invalid API key")
    throttle = request.app[THROTTLE]
    proxies: tuple[IPNetwork, ...] = request.app.get(TRUSTED_PROXIES, ())
    client = clientip.client_address(request, proxies)
    address, digest, now = str(client or ""), hash_key(raw), time.time()
    wait = throttle.retry_after(address, digest, now)
    if wait is not None:
        raise TooManyRequests(wait)  # too many invalid keys from this address: no database lookup
    pool = get_pool(request.app)
    keys = request.app.get(KEYS)
    limiter = request.app.get(LIMITER)
    found = None
    # A cached key is served only after a round trip on the key listener that began after this request
    # arrived: a revocation committed before it has then been applied (or the listener is found dead).
    if keys is not None and keys.get(digest) is not None and await keys.confirmed():
        found = keys.get(digest)
    if found is not None and (limiter is None or limiter.fresh(found.key_id, now)):
        _FROM_CACHE.inc()
    else:
        token = keys.token() if keys is not None else 0
        found, row = await authenticate_with_windows(pool, digest)
        _FROM_DATABASE.inc()
        if found is None:
            throttle.failed(address, now)
            raise Unauthorized("invalid API key")
        if keys is not None:
            keys.put(digest, found, token)
        if limiter is not None:
            limiter.load(found.key_id, row, now)
    throttle.succeeded(digest, now)
    structlog.contextvars.bind_contextvars(account_id=found.account_id)
    if not clientip.allowed(client, found.networks):
        # Before the rate limit: a key used from elsewhere does not use up the account's own allowance.
        raise Forbidden(f"requests from {client or 'an unknown address'} are not allowed for this account: "
                        "the address is not on its IP allow-list")
    request[PRINCIPAL] = found
    plans = request.app[PLANS]
    per_minute, burst = plans.get(found.plan, plans["production"])
    if limiter is not None:
        verdict = limiter.hit(found.key_id, time.time(), per_minute=per_minute, burst=burst)
    else:
        verdict = await ratelimit.hit(pool, found.key_id, time.time(), per_minute=per_minute, burst=burst)
    request[VERDICT] = verdict
    if not verdict.allowed:
        raise TooManyRequests(verdict.retry_after)
    return await handler(request)


async def rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``X-RateLimit-*`` on every authenticated response, errors and 429s included."""
    verdict = request.get(VERDICT)
    if verdict is not None:
        response.headers["X-RateLimit-Limit"] = str(verdict.limit)
        response.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
        response.headers["X-RateLimit-Reset"] = str(verdict.reset)
