"""Message history (Qlara §7.1) and export jobs (§7.2 to 7.3) with signed, expiring downloads."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, Final

import asyncpg
from aiohttp import web

from qlara_events.api import params
from qlara_events.api.auth import PREFIX, get_pool, key_channels, principal, require_channel
from qlara_events.api.shared import SIGNING_KEY, STORE, serve_signed
from qlara_events.config import Settings
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import BadRequest, Conflict, NotFound
from qlara_events.exporter import Exporter
from qlara_events.http import json_object, json_response, path_int
from qlara_events.storage import sign_url
from qlara_events.store import exports as store
from qlara_events.store import messages
from qlara_events.store.db import create_pool

SETTINGS: Final = web.AppKey("exports_settings", Settings)
EXPORTER: Final = web.AppKey("exporter", Exporter)
FILES: Final = "/files/exports"


def _ts(v: dt.datetime | None) -> str | None:
    return None if v is None else v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


#: Free-text filters (sender, destination, a string campaignId): stored in the job's jsonb parameters.
MAX_FILTER: Final = 200
#: A numeric campaignId is a 64-bit integer (larger JSON numbers lose precision when parsed).
MIN_INT64: Final = -(2**63)
MAX_INT64: Final = 2**63 - 1
#: Contact and list ids are positive bigints; a contacts export takes at most this many of them.
MAX_CONTACT_ID: Final = MAX_INT64
MAX_EXPORT_IDS: Final = 10_000
#: The fields of a contacts export request (anything else is a 400: a misspelt filter would otherwise export
#: every contact of the account).
CONTACT_FILTERS: Final = ("listIds", "contactIds")
#: The fields of a history export request: the window, the free-text filters and GET /messages/history's
#: channel and status filters (anything else is a 400, as for the contacts export).
HISTORY_FIELDS: Final = ("startDateTime", "endDateTime", "sender", "destination", "campaignId", "channel", "status")


def _offset_datetime(raw: object, name: str) -> dt.datetime:
    """An RFC 3339 date-time with its mandatory offset (Qlara refuses date-only or offset-less values)."""
    if raw is None:
        raise BadRequest(f"{name} is required: an ISO-8601 date-time with offset, e.g. 2026-03-01T00:00:00+01:00")
    return params.date_time(raw, name)


def _unknown_fields(body: dict[str, Any], known: tuple[str, ...], hint: str) -> None:
    """400 naming the fields of body that are not in known (a misspelt filter would otherwise be ignored)."""
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest("unknown fields: " + ", ".join(name[:64] for name in unknown[:10]) + "; " + hint)


def _filter_enum(body: dict[str, Any], name: str, members: type[Channel] | type[DeliveryStatus]) -> str | None:
    """An optional enum filter given as in GET /messages/history (any case); absent is None, anything else 400."""
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, str) or value.upper() not in members.__members__:
        raise BadRequest(f"{name} must be one of " + ", ".join(m.value for m in members))
    return value.upper()


def _filter_text(body: dict[str, Any], name: str) -> str | None:
    """An optional free-text filter; when present (null included) it must be 1 to 200 characters without NUL."""
    if name not in body:
        return None
    value = body[name]
    number = params.json_int(value, MIN_INT64, MAX_INT64) if name == "campaignId" else None
    if number is not None:
        value = str(number)  # upstream campaign ids are text; a numeric one is its decimal form
    if not isinstance(value, str) or not value or len(value) > MAX_FILTER or "\x00" in value:
        which = "an integer or a string" if name == "campaignId" else "a string"
        raise BadRequest(f"{name} must be {which} of 1 to {MAX_FILTER} characters")
    return value


async def history(request: web.Request) -> web.Response:
    """GET /messages/history?channel=&from=&to=&status=&page=&limit= → plain array, oldest first."""
    q = request.query
    raw_channel = q.get("channel")
    if not raw_channel or raw_channel.upper() not in Channel.__members__:
        raise BadRequest("channel is required: SMS, RCS or WHATSAPP")
    channel = raw_channel.upper()
    require_channel(request, channel)
    start = _offset_datetime(q.get("from"), "from")
    end = _offset_datetime(q.get("to"), "to")
    status = q.get("status")
    if status is not None and status.upper() not in DeliveryStatus.__members__:
        raise BadRequest("status must be one of " + ", ".join(s.value for s in DeliveryStatus))
    limit = params.query_int(q, "limit", 20, 1, 1000)
    page = params.query_int(q, "page", 0, 0, 10_000_000)
    if start > end:
        return json_response([])
    rows = await messages.history(get_pool(request.app), principal(request).account_id, channel, start, end,
                                  status.upper() if status else None, limit, params.offset(page, limit))
    return json_response(rows)


def export_json(r: asyncpg.Record) -> dict[str, Any]:
    """An export job as listed."""
    now = dt.datetime.now(dt.UTC)
    status = r["status"]
    if status == "COMPLETED" and r["expires_at"] is not None and r["expires_at"] <= now:
        status = "EXPIRED"  # the worker's sweep may not have run yet
    return {
        "id": r["export_id"], "kind": r["kind"], "status": status,
        "isAvailableForDownload": status == "COMPLETED",
        "rowCount": r["row_count"], "size": r["size"], "error": r["error"], "parameters": r["params"],
        "createdAt": _ts(r["created_at"]), "startedAt": _ts(r["started_at"]),
        "completedAt": _ts(r["completed_at"]), "expiresAt": _ts(r["expires_at"]),
    }


#: A request body: enough for MAX_EXPORT_IDS ids (20 digits and a comma each) and the filters.
MAX_BODY: Final = 512 * 1024


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request, limit=MAX_BODY, empty_is_object=True)


async def _queue(request: web.Request, kind: str, job: dict[str, Any]) -> web.Response:
    channels = key_channels(request)
    if channels is not None and kind != "CONTACTS":
        job = {**job, "channels": channels}  # a restricted key exports its channels' messages only
    cap = request.app[SETTINGS].export_max_pending_per_account
    async with get_pool(request.app).acquire() as conn:
        row = await store.create(conn, principal(request).account_id, kind, job, cap)
    if row is None:
        raise Conflict(f"the account already has {cap} exports queued or running: wait for one to finish "
                       "(GET /exports)")
    request.app[EXPORTER].wake.set()
    return json_response(export_json(row), status=202)


async def export_history(request: web.Request) -> web.Response:
    """POST /messages/history/export {startDateTime, endDateTime, sender?, destination?, campaignId?, channel?,
    status?} → 202; unknown fields are a 400."""
    body = await _body(request)
    _unknown_fields(body, HISTORY_FIELDS, "the fields are " + ", ".join(HISTORY_FIELDS))
    start = _offset_datetime(body.get("startDateTime"), "startDateTime")
    end = _offset_datetime(body.get("endDateTime"), "endDateTime")  # end < start: an empty file, as GET does
    job: dict[str, Any] = {"startDateTime": start.isoformat(), "endDateTime": end.isoformat()}
    for name in ("sender", "destination", "campaignId"):
        value = _filter_text(body, name)
        if value is not None:
            job[name] = value
    channel = _filter_enum(body, "channel", Channel)
    if channel is not None:
        require_channel(request, channel)  # a key restricted to other channels may not ask for this one
        job["channel"] = channel
    status = _filter_enum(body, "status", DeliveryStatus)
    if status is not None:
        job["status"] = status
    return await _queue(request, "MESSAGE_HISTORY", job)


async def export_delivery_reports(request: web.Request) -> web.Response:
    """POST /exports/delivery-reports {campaignId} or {startDateTime, endDateTime} → 202.

    With a campaignId the window is not needed (and not applied), but a window field that is sent must be valid.
    """
    body = await _body(request)
    window = {name: _offset_datetime(body[name], name) for name in ("startDateTime", "endDateTime") if name in body}
    campaign = _filter_text(body, "campaignId")
    if campaign is not None:
        return await _queue(request, "DELIVERY_REPORTS", {"campaignId": campaign})
    if not window:
        raise BadRequest("give campaignId, or startDateTime and endDateTime")
    start = window.get("startDateTime") or _offset_datetime(None, "startDateTime")
    end = window.get("endDateTime") or _offset_datetime(None, "endDateTime")
    return await _queue(request, "DELIVERY_REPORTS", {"startDateTime": start.isoformat(),
                                                      "endDateTime": end.isoformat()})


def _id_array(body: dict[str, Any], name: str) -> list[int] | None:
    """An optional array of 1 to 10,000 positive 64-bit ids (deduplicated, sorted); absent is None, else 400."""
    if name not in body:
        return None
    value = body[name]
    problem = f"{name} must be a non-empty array of at most {MAX_EXPORT_IDS} integer ids from 1 to {MAX_CONTACT_ID}"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EXPORT_IDS:
        raise BadRequest(problem)
    ids: set[int] = set()
    for v in value:
        number = params.json_int(v, 1, MAX_CONTACT_ID)
        if number is None:
            raise BadRequest(problem)
        ids.add(number)
    return sorted(ids)


async def export_contacts(request: web.Request) -> web.Response:
    """POST /exports/contacts {listIds} or {contactIds} or {} (every contact of the account) → 202."""
    body = await _body(request)
    _unknown_fields(body, CONTACT_FILTERS, "give listIds or contactIds, or neither for every contact")
    if all(name in body for name in CONTACT_FILTERS):
        raise BadRequest("give listIds or contactIds, not both")
    job: dict[str, Any] = {}
    for name in CONTACT_FILTERS:
        ids = _id_array(body, name)
        if ids is not None:
            job[name] = ids
    return await _queue(request, "CONTACTS", job)


async def list_exports(request: web.Request) -> web.Response:
    """GET /exports?page=&limit= (newest first)."""
    limit = params.query_int(request.query, "limit", 10, 1, 1000)
    page = params.query_int(request.query, "page", 0, 0, 1_000_000)
    rows = await store.page(get_pool(request.app), principal(request).account_id, limit, params.offset(page, limit),
                            key_channels(request))
    return json_response([export_json(r) for r in rows])


def _export_id(request: web.Request) -> int:
    return path_int(request, "exportId", "export")


async def download_link(request: web.Request) -> web.Response:
    """GET /exports/{exportId}: a signed, time-limited URL (400 once expired, 409 while not ready)."""
    row = await store.get(get_pool(request.app), principal(request).account_id, _export_id(request),
                          key_channels(request))
    if row is None:
        raise NotFound("no such export in this account")
    job = export_json(row)
    if job["status"] == "EXPIRED":
        raise BadRequest("this export has expired; regenerate it with POST /exports/{exportId}")
    if job["status"] == "FAILED":
        raise Conflict(f"this export failed: {row['error']}; regenerate it with POST /exports/{{exportId}}")
    if job["status"] != "COMPLETED":
        raise Conflict("this export is still being generated; poll GET /exports")
    s = request.app[SETTINGS]
    ttl = int(min(s.download_url_ttl_s, (row["expires_at"] - dt.datetime.now(dt.UTC)).total_seconds()))
    url, expires = sign_url(request.app[SIGNING_KEY], s.base_url, f"{FILES}/{row['storage_key']}", max(ttl, 1))
    return json_response({"id": row["export_id"], "url": url,
                          "urlExpiresAt": _ts(dt.datetime.fromtimestamp(expires, dt.UTC)),
                          "rowCount": row["row_count"], "size": row["size"]})


async def regenerate(request: web.Request) -> web.Response:
    """POST /exports/{exportId}: run a finished (expired, failed or completed) export again → 202."""
    pool = get_pool(request.app)
    account = principal(request).account_id
    channels = key_channels(request)
    old = await store.get(pool, account, _export_id(request), channels)
    if old is None:
        raise NotFound("no such export in this account")
    row = await store.regenerate(pool, account, _export_id(request),
                                 request.app[SETTINGS].export_max_pending_per_account, channels)
    if row is None:
        raise Conflict("this export is already being generated, or the account has as many exports queued or "
                       "running as it may")
    if old["storage_key"]:
        await request.app[STORE].delete(old["storage_key"])
    request.app[EXPORTER].wake.set()
    return json_response(export_json(row), status=202)


async def download(request: web.Request) -> web.StreamResponse:
    """GET /files/exports/{key}?expires=&signature= → the CSV."""
    return await serve_signed(
        request, FILES, lambda key: store.by_storage_key(get_pool(request.app), key),
        lambda row: {"Content-Type": "text/csv; charset=utf-8",
                     "Content-Disposition": f'attachment; filename="export-{row["export_id"]}-'
                                            f'{row["kind"].lower()}.csv"'},
        "this export is no longer available")


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register history and export routes and run the export worker with the api role."""
    app[SETTINGS] = settings

    async def exporter_ctx(a: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings, max_size=3)
        exporter = Exporter(settings, pool, a[STORE])
        a[EXPORTER] = exporter
        task = asyncio.create_task(exporter.run(), name="exporter")
        yield
        exporter.stop()
        await asyncio.wait_for(task, 30)
        await pool.close()

    app.cleanup_ctx.append(exporter_ctx)
    app.router.add_get(f"{PREFIX}/messages/history", history)
    app.router.add_post(f"{PREFIX}/messages/history/export", export_history)
    app.router.add_post(f"{PREFIX}/exports/delivery-reports", export_delivery_reports)
    app.router.add_post(f"{PREFIX}/exports/contacts", export_contacts)  # before /exports/{exportId}
    app.router.add_get(f"{PREFIX}/exports", list_exports)
    app.router.add_get(f"{PREFIX}/exports/{{exportId}}", download_link)
    app.router.add_post(f"{PREFIX}/exports/{{exportId}}", regenerate)
    app.router.add_get(f"{FILES}/{{key}}", download)

