"""The delivery-status webhook (Qlara §4): configuration, secret rotation, delivery log and replay."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any, Final

import asyncpg
from aiohttp import web

from qlara_events.api.auth import PREFIX, get_pool, principal, require_unrestricted
from qlara_events.config import Settings
from qlara_events.dispatcher.ssrf import (
    GENERIC_REFUSAL,
    UNRESOLVABLE,
    ForbiddenDestination,
    check_url,
    parse_networks,
    resolve_checked,
    webhook_ports,
)
from qlara_events.errors import BadRequest, Conflict, NotFound
from qlara_events.http import json_object, json_response
from qlara_events.logs import get_logger
from qlara_events.standard_webhooks import new_secret
from qlara_events.store import webhooks as store

log = get_logger("webhooks")

SETTINGS: Final = web.AppKey("webhook_settings", Settings)
BASE: Final = f"{PREFIX}/webhooks/delivery-status"
STATES: Final = ("scheduled", "in_flight", "succeeded", "dead", "superseded")
MAX_PAGE: Final = 1000


def _ts(v: dt.datetime | None) -> str | None:
    return None if v is None else v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def webhook_json(r: asyncpg.Record) -> dict[str, Any]:
    """The webhook resource."""
    return {
        "id": r["webhook_id"],
        "callbackUrl": r["callback_url"],
        "status": r["status"],
        "signingSecret": r["secret"],
        "previousSecretExpiresAt": _ts(r["previous_secret_expires_at"])
        if r["previous_secret"] and r["previous_secret_expires_at"] and
        r["previous_secret_expires_at"] > dt.datetime.now(dt.UTC) else None,
        "failingSince": _ts(r["failing_since"]),
        "disabledAt": _ts(r["disabled_at"]),
        "disabledReason": r["disabled_reason"],
        "createdAt": _ts(r["created_at"]),
        "updatedAt": _ts(r["updated_at"]),
    }


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await json_object(request)


async def _callback_url(request: web.Request) -> str:
    """The validated ``callbackUrl`` of the body: syntax, HTTPS, and what its host resolves to."""
    body = await _json_object(request)
    url = body.get("callbackUrl")
    if not isinstance(url, str) or not url:
        raise BadRequest("callbackUrl is required: an https:// URL")
    if not url.isprintable():
        raise BadRequest("callbackUrl must not contain control characters")
    s = request.app[SETTINGS]
    allowed = parse_networks(s.webhook_allowed_networks)
    try:
        parsed = check_url(url, require_https=s.webhook_require_https, allowed=allowed,
                           ports=webhook_ports(s.webhook_allowed_ports))
        assert parsed.host is not None
        await resolve_checked(parsed.host, parsed.port or 443, allowed=allowed)
    except ForbiddenDestination as exc:
        if exc.address is None and exc.reason != UNRESOLVABLE:
            raise  # about the URL's form alone (scheme, port, credentials...): nothing the caller does not know
        # What the host is or resolves to stays here: otherwise registration is a resolver for internal names.
        log.warning("webhook_destination_refused", account_id=principal(request).account_id, host=exc.host,
                    address=exc.address, reason=exc.reason, detail=exc.message)
        raise BadRequest(GENERIC_REFUSAL) from None
    return url


def _account_wide(request: web.Request) -> None:
    """The webhook carries every channel's statuses and its signing secret: unrestricted keys only."""
    require_unrestricted(request, "the delivery-status webhook")


async def _webhook(request: web.Request) -> asyncpg.Record:
    _account_wide(request)
    found = await store.get(get_pool(request.app), principal(request).account_id)
    if found is None:
        raise NotFound("no delivery-status webhook is configured for this account")
    return found


async def create(request: web.Request) -> web.Response:
    """POST: register the account's webhook (409 when one exists)."""
    _account_wide(request)
    url = await _callback_url(request)
    created = await store.create(get_pool(request.app), principal(request).account_id, url, new_secret())
    if created is None:
        raise Conflict("a delivery-status webhook already exists; use PUT to change its URL")
    return json_response(webhook_json(created), status=201)


async def read(request: web.Request) -> web.Response:
    """GET: the webhook, its secret included."""
    return json_response(webhook_json(await _webhook(request)))


async def replace(request: web.Request) -> web.Response:
    """PUT: change the URL (and re-enable a disabled webhook); never creates."""
    _account_wide(request)
    url = await _callback_url(request)
    updated = await store.update_url(get_pool(request.app), principal(request).account_id, url)
    if updated is None:
        raise NotFound("no delivery-status webhook is configured for this account; use POST to create one")
    return json_response(webhook_json(updated))


async def remove(request: web.Request) -> web.Response:
    """DELETE: remove the webhook and drop every delivery still queued for it."""
    _account_wide(request)
    if not await store.delete(get_pool(request.app), principal(request).account_id):
        raise NotFound("no delivery-status webhook is configured for this account")
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    """POST .../rotate-secret: new secret; the old one keeps signing during the overlap."""
    _account_wide(request)
    s = request.app[SETTINGS]
    rotated = await store.rotate(get_pool(request.app), principal(request).account_id, new_secret(),
                                 s.webhook_rotation_overlap_s)
    if rotated is None:
        raise NotFound("no delivery-status webhook is configured for this account")
    return json_response(webhook_json(rotated))


def _utc(t: dt.datetime) -> dt.datetime | None:
    """``t`` in UTC, or None when it has no offset or falls outside the datetime range once in UTC."""
    if t.tzinfo is None:
        return None
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is in year 0 in UTC
        return None


def _time_param(request: web.Request, name: str) -> dt.datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        t = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO-8601 date-time with offset") from None
    utc = _utc(t)
    if utc is None:
        raise BadRequest(f"{name} must carry a UTC offset and lie within years 1-9999 in UTC")
    return utc


def _cursor(raw: str | None) -> tuple[dt.datetime, str] | None:
    if not raw:
        return None
    did = ""
    try:
        at, _, did = base64.urlsafe_b64decode(raw.encode()).decode().partition("|")
        t = _utc(dt.datetime.fromisoformat(at))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        t = None
    # The API writes UTC times and delivery ids without NUL (Postgres text cannot hold one).
    if t is None or "\x00" in did:
        raise BadRequest("cursor is not one this API returned")
    return t, did


def _delivery_json(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "deliveryId": r["delivery_id"],
        "messageId": r["message_id"],
        "eventType": r["event_type"],
        "status": r["state"],
        "attempts": r["attempts"],
        "createdAt": _ts(r["created_at"]),
        "lastAttemptAt": _ts(r["last_attempt_at"]),
        "responseCode": r["last_status_code"],
        "latencyMs": r["last_latency_ms"],
        "error": r["last_error"],
        "nextAttemptAt": _ts(r["next_attempt_at"]),
        "finishedAt": _ts(r["finished_at"]),
        "attemptLog": r["attempt_log"],
    }


async def deliveries(request: web.Request) -> web.Response:
    """GET .../deliveries: attempts with time, code, latency, error and next attempt; keyset pages."""
    hook = await _webhook(request)
    q = request.query
    states = [s for s in q.get("status", "").split(",") if s] or None
    if states and any(s not in STATES for s in states):
        raise BadRequest("status must be one or more of " + ", ".join(STATES))
    if "\x00" in q.get("messageId", ""):
        raise BadRequest("messageId must not contain NUL characters")
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    rows = await store.deliveries(
        get_pool(request.app), hook["webhook_id"], states=states, since=_time_param(request, "since"),
        until=_time_param(request, "until"), message_id=q.get("messageId") or None,
        after=_cursor(q.get("cursor")), limit=limit,
    )
    next_cursor = None
    if len(rows) == limit:
        last = rows[-1]
        next_cursor = base64.urlsafe_b64encode(
            f"{last['created_at'].isoformat()}|{last['delivery_id']}".encode()).decode()
    return json_response({"items": [_delivery_json(r) for r in rows], "nextCursor": next_cursor})


async def retry(request: web.Request) -> web.Response:
    """POST .../deliveries/{deliveryId}/retry: attempt one delivery again now."""
    hook = await _webhook(request)
    delivery_id = request.match_info["deliveryId"]
    # A delivery id never holds NUL (Postgres text cannot), so such an id is simply unknown.
    if "\x00" in delivery_id or not await store.retry_one(get_pool(request.app), hook["webhook_id"], delivery_id):
        raise NotFound("no such delivery for this webhook (or it is being attempted right now)")
    return json_response({"deliveryId": request.match_info["deliveryId"], "status": "scheduled"}, status=202)


async def recover(request: web.Request) -> web.Response:
    """POST .../deliveries/recover {since, until}: reschedule every failed or dead delivery in the window."""
    hook = await _webhook(request)
    body = await _json_object(request)
    bounds = []
    for name in ("since", "until"):
        raw = body.get(name)
        try:
            t = _utc(dt.datetime.fromisoformat(raw)) if isinstance(raw, str) else None
        except ValueError:
            t = None
        if t is None:
            raise BadRequest(f"{name} is required: an ISO-8601 date-time with offset, within years 1-9999 in UTC")
        bounds.append(t)
    since, until = bounds
    if until <= since:
        raise BadRequest("until must be after since")
    n = await store.recover(get_pool(request.app), hook["webhook_id"], since, until)
    return json_response({"scheduled": n}, status=202)


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the webhook routes."""
    app[SETTINGS] = settings
    app.router.add_post(BASE, create)
    app.router.add_get(BASE, read)
    app.router.add_put(BASE, replace)
    app.router.add_delete(BASE, remove)
    app.router.add_post(f"{BASE}/rotate-secret", rotate_secret)
    app.router.add_get(f"{BASE}/deliveries", deliveries)
    app.router.add_post(f"{BASE}/deliveries/recover", recover)
    app.router.add_post(f"{BASE}/deliveries/{{deliveryId}}/retry", retry)

