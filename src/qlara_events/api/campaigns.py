"""Campaigns (Qlara §6): drafts, goal and price, confirmation against the account's credit, statistics."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web

from qlara_events.api import params
from qlara_events.api.auth import PREFIX, get_pool, key_channels, principal, require_channel
from qlara_events.config import Settings
from qlara_events.contacts.phones import from_e164
from qlara_events.domain import campaigns as rules
from qlara_events.errors import BadRequest, NotFound
from qlara_events.http import json_object, json_response, path_int
from qlara_events.store import campaigns as store

BASE: Final = f"{PREFIX}/campaigns"
SETTINGS: Final = web.AppKey("campaign_settings", Settings)
STATUS_NAMES: Final = {0: "DRAFT", 1: "READY", 2: "SENDING", 3: "COMPLETED", 4: "FAILED"}
_STRINGS: Final = ("name", "description", "smsSender", "smsBody", "rcsAgentId", "rcsTemplateId",
                   "whatsappPhoneNumberId", "whatsappTemplateId")
MAX_DESTINATIONS: Final = 100_000


def _ts(v: dt.datetime | None) -> str | None:
    return None if v is None else v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def campaign_json(r: asyncpg.Record, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The campaign resource (Qlara's fields plus progress)."""
    counts = counts or {}
    out: dict[str, Any] = {
        "id": r["campaign_id"], "name": r["name"], "description": r["description"],
        "sendingMode": r["sending_mode"], "smsSender": r["sms_sender"], "smsBody": r["sms_body"],
        "rcsAgentId": r["rcs_agent_id"], "rcsTemplateId": r["rcs_template_id"],
        "whatsappPhoneNumberId": r["whatsapp_phone_number_id"], "whatsappTemplateId": r["whatsapp_template_id"],
        "destinationType": r["destination_type"], "contactListIds": list(r["contact_list_ids"]),
        "destinations": list(r["destinations"]),
        "scheduledDate": rules.format_schedule(r["scheduled_at"]) if r["scheduled_at"] else None,
        "readyToSend": r["ready_to_send"], "status": r["status"], "statusName": STATUS_NAMES[r["status"]],
        "totalDestinations": r["total_destinations"],
        "totalSuccess": counts.get("DELIVERED", 0) + counts.get("READ", 0),
        "totalFailed": counts.get("ERROR", 0) + counts.get("EXPIRED", 0),
        "price": float(r["price"]) if r["price"] is not None else None,
        "messagesCreated": r["expanded"], "failedReason": r["failed_reason"],
        "createdAt": _ts(r["created_at"]), "confirmedAt": _ts(r["confirmed_at"]),
        "startedAt": _ts(r["started_at"]), "completedAt": _ts(r["completed_at"]),
    }
    return out


#: A request body: MAX_DESTINATIONS numbers of up to 16 characters (quoted, a comma) and the text fields.
MAX_BODY: Final = MAX_DESTINATIONS * 24 + 256 * 1024
#: contactListIds per campaign.
MAX_CONTACT_LISTS: Final = 100
#: The longest E.164 number is 15 digits and a "+"; anything longer is refused before libphonenumber sees it.
MAX_E164: Final = 16


async def _body(request: web.Request) -> dict[str, Any]:
    return await json_object(request, limit=MAX_BODY)


def _destinations(dests: list[Any]) -> list[str]:
    """The destinations as E.164 numbers, deduplicated in order; 400 naming the first invalid one.

    CPU-bound (libphonenumber, some 10 µs a number): callers run it in a worker thread.
    """
    normalised = []
    for i, d in enumerate(dests):
        try:
            phone = from_e164(d) if isinstance(d, str) and len(d) <= MAX_E164 else None
        except ValueError:
            phone = None
        if phone is None or not phone.is_valid:
            raise BadRequest(f"destinations[{i}] is not a valid E.164 phone number")
        normalised.append(phone.e164)
    return list(dict.fromkeys(normalised))


def _schedule_pattern() -> str:
    """``yyyy-MM-dd HH:mm:ss.SSSZ`` with real calendar dates of the years 1000 to 2999 (leap days included)."""
    day = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
           "|02-(?:0[1-9]|1[0-9]|2[0-8]))")
    leap_year = "(?:[12][0-9](?:0[48]|[2468][048]|[13579][26])|(?:1[26]|2[048])00)"
    date = f"(?:[12][0-9]{{3}}-{day}|{leap_year}-02-29)"
    return f"{date} (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\\.[0-9]{{3}}[+-](?:[01][0-9]|2[0-3])[0-5][0-9]"


#: scheduledDate, exactly (strptime alone would also take "2026-5-4 8:30:00.1Z").
SCHEDULE: Final = re.compile(_schedule_pattern())
SCHEDULE_PATTERN: Final = f"^{SCHEDULE.pattern}$"
MAX_TEXT: Final = 2000
#: A numeric text field (a template id sent as a number) is stored as its decimal text.
MAX_INT64: Final = 2**63 - 1
#: contactListIds: list ids (bigint), kept below 2**62 as the contact lists' ids are.
MAX_LIST_ID: Final = 2**62 - 1


def _text_field(body: dict[str, Any], name: str) -> str | None:
    """A text field: a string (or an integer, stored as its decimal text) of at most 2000 characters, or null."""
    v = body[name]
    if v is None:
        return None
    number = params.json_int(v, -MAX_INT64 - 1, MAX_INT64)
    if number is not None:
        return str(number)
    if not isinstance(v, str) or len(v) > MAX_TEXT or "\x00" in v:
        raise BadRequest(f"{name} must be a string of at most {MAX_TEXT} characters, an integer or null")
    return v


async def _columns(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """Validate the fields present in ``body``; return column values."""
    values: dict[str, Any] = {}
    for name in _STRINGS:
        if name in body:
            values[store.FIELDS[name]] = _text_field(body, name)
    if (creating or "name" in body) and not values.get("name"):
        raise BadRequest("name is required: a non-empty string")
    if "sendingMode" in body or creating:
        mode = body.get("sendingMode")
        if mode not in rules.SENDING_MODES:
            raise BadRequest("sendingMode must be one of " + ", ".join(rules.SENDING_MODES))
        values["sending_mode"] = mode
    if "destinationType" in body or creating:
        dtype = params.json_int(body.get(
            "destinationType", 1 if "contactListIds" in body else 2 if "destinations" in body else None), 1, 2)
        if dtype is None:
            raise BadRequest("destinationType must be 1 (contactListIds) or 2 (destinations)")
        values["destination_type"] = dtype
    if "contactListIds" in body:
        raw_ids = body["contactListIds"]
        if isinstance(raw_ids, list) and len(raw_ids) > MAX_CONTACT_LISTS:
            raise BadRequest(f"contactListIds must be an array of at most {MAX_CONTACT_LISTS} list ids")
        ids = [params.json_int(i, 1, MAX_LIST_ID) for i in raw_ids] if isinstance(raw_ids, list) else [None]
        if None in ids:
            raise BadRequest("contactListIds must be an array of list ids")
        values["contact_list_ids"] = sorted(set(ids))
    if "destinations" in body:
        dests = body["destinations"]
        if not isinstance(dests, list) or len(dests) > MAX_DESTINATIONS:
            raise BadRequest(f"destinations must be an array of at most {MAX_DESTINATIONS} E.164 numbers")
        # Off the event loop: 100,000 numbers take libphonenumber about a second of CPU.
        values["destinations"] = await asyncio.to_thread(_destinations, dests)
    if "scheduledDate" in body:
        raw = body["scheduledDate"]
        if raw is not None and (not isinstance(raw, str) or not SCHEDULE.fullmatch(raw)):
            raise BadRequest("scheduledDate must look like 2026-05-04 08:30:00.000+0200 (years 1000 to 2999)")
        values["scheduled_at"] = None if raw is None else rules.parse_schedule(raw)
    if "readyToSend" in body:
        if not isinstance(body["readyToSend"], bool):
            raise BadRequest("readyToSend must be true or false")
        values["ready_to_send"] = body["readyToSend"]
    return values


def _as_api(r: Mapping[str, Any] | asyncpg.Record) -> dict[str, Any]:
    return {api: r.get(col) for api, col in store.FIELDS.items()}


def _complete(r: Mapping[str, Any] | asyncpg.Record) -> None:
    """400 unless the campaign could be sent: channel fields and a recipient source."""
    missing = rules.missing_fields(r["sending_mode"], _as_api(r))
    if missing:
        raise BadRequest(f"sendingMode {r['sending_mode']} needs " + ", ".join(missing))
    if r["destination_type"] == 1 and not r.get("contact_list_ids"):
        raise BadRequest("destinationType 1 needs contactListIds")
    if r["destination_type"] == 2 and not r.get("destinations"):
        raise BadRequest("destinationType 2 needs destinations")


def _fingerprint(r: asyncpg.Record) -> str:
    """What the price depends on: any change to it invalidates calculateGoal."""
    keys = ("sending_mode", "sms_body", "destination_type", "contact_list_ids", "destinations")
    return hashlib.sha256(orjson.dumps([str(r[k]) for k in keys])).hexdigest()


def _campaign_id(request: web.Request) -> int:
    return path_int(request, "id", "campaign")


async def _campaign(request: web.Request) -> asyncpg.Record:
    row = await store.get(get_pool(request.app), principal(request).account_id, _campaign_id(request))
    if row is None:
        raise NotFound("no such campaign in this account")
    require_channel(request, rules.SENDING_MODES[row["sending_mode"]][0])
    return row


async def create(request: web.Request) -> web.Response:
    """POST /campaigns → 201 draft (status 0)."""
    values = await _columns(await _body(request), creating=True)
    require_channel(request, rules.SENDING_MODES[values["sending_mode"]][0])
    if values.get("ready_to_send"):
        _complete(values)  # before the insert: a refused campaign must not be created
    row = await store.create(get_pool(request.app), principal(request).account_id, values)
    return json_response(campaign_json(row), status=201)


async def list_campaigns(request: web.Request) -> web.Response:
    """GET /campaigns?status=&page=&limit= (newest first)."""
    q = request.query
    try:
        page, limit = int(q.get("page", "0")), int(q.get("limit", "10"))
        status = int(q["status"]) if q.get("status") else None
    except ValueError:
        raise BadRequest("page, limit and status must be integers") from None
    if not 0 <= page <= 1_000_000 or not 1 <= limit <= 1000 or (status is not None and status not in STATUS_NAMES):
        raise BadRequest("page >= 0, limit 1..1000, status 0..4")
    # A key restricted to some channels lists the campaigns it may open (their first channel is one of them).
    rows = await store.page(get_pool(request.app), principal(request).account_id, status, limit,
                            params.offset(page, limit), key_channels(request))
    return json_response([campaign_json(r) for r in rows])


async def get_campaign(request: web.Request) -> web.Response:
    """GET /campaigns/{id}"""
    row = await _campaign(request)
    return json_response(campaign_json(row, await store.totals(get_pool(request.app), row["campaign_id"])))


async def update(request: web.Request) -> web.Response:
    """PUT /campaigns/{id}: partial update while status is 0 or 1 (400 otherwise)."""
    current = await _campaign(request)
    values = await _columns(await _body(request), creating=False)
    if current["status"] not in (0, 1):
        raise BadRequest(f"a campaign in status {current['status']} can no longer be edited")
    account = principal(request).account_id
    async with get_pool(request.app).acquire() as conn, conn.transaction():
        row = await store.update(conn, account, _campaign_id(request), values)
        if row is None:
            raise BadRequest("the campaign started meanwhile and can no longer be edited")
        if row["ready_to_send"]:
            _complete(row)
        if row["confirmed_at"] is not None and row["goal_fingerprint"] != _fingerprint(row):
            # What was priced and reserved is not what would be sent any more: back to draft, credit
            # returned, calculateGoal and confirm again. (Name or schedule edits keep the confirmation.)
            row = await store.unconfirm(conn, account, row["campaign_id"])
            assert row is not None  # -- locked by the update above, in this transaction
    return json_response(campaign_json(row))


async def delete(request: web.Request) -> web.Response:
    """DELETE /campaigns/{id} → 204; 404 when absent or already started (status 2, 3, 4)."""
    await _campaign(request)
    if not await store.delete(get_pool(request.app), principal(request).account_id, _campaign_id(request)):
        raise NotFound("no deletable campaign: it does not exist or has started")
    return web.Response(status=204)


def _price_json(r: asyncpg.Record, settings: Settings) -> dict[str, Any]:
    return {"id": r["campaign_id"], "totalDestinations": r["total_destinations"],
            "unitPrice": float(r["unit_price"]), "price": float(r["price"]), "currency": settings.currency,
            "calculatedAt": _ts(r["goal_calculated_at"]),
            "upToDate": r["goal_fingerprint"] == _fingerprint(r)}


async def calculate_goal(request: web.Request) -> web.Response:
    """POST /campaigns/{id}/calculateGoal: count recipients and price the campaign."""
    row = await _campaign(request)
    if row["status"] not in (0, 1):
        raise BadRequest("the campaign has started; its goal is fixed")
    if row["confirmed_at"] is not None:
        raise BadRequest("the campaign is confirmed: its goal and price are fixed (editing its recipients or"
                         " content returns it to draft)")
    _complete(row)
    pool = get_pool(request.app)
    account = principal(request).account_id
    if row["destination_type"] == 1:
        lists = list(row["contact_list_ids"])
        unknown = set(lists) - await store.existing_lists(pool, account, lists)
        if unknown:
            raise BadRequest("unknown contactListIds: " + ", ".join(map(str, sorted(unknown))))
        total = await store.count_recipients(pool, account, lists)
    else:
        total = len(row["destinations"])
    settings = request.app[SETTINGS]
    channel = rules.SENDING_MODES[row["sending_mode"]][0]
    unit = Decimal(str(settings.prices[channel]))
    if channel == "SMS":
        unit *= rules.sms_segments(row["sms_body"] or "")
    priced = await store.set_goal(pool, account, row["campaign_id"], total, unit, unit * total, _fingerprint(row))
    if priced is None:
        raise BadRequest("the campaign started meanwhile")
    return json_response(_price_json(priced, settings))


async def price(request: web.Request) -> web.Response:
    """GET /campaigns/{id}/price: the last calculateGoal result (400 before one)."""
    row = await _campaign(request)
    if row["goal_calculated_at"] is None:
        raise BadRequest("run POST /campaigns/{id}/calculateGoal first")
    return json_response(_price_json(row, request.app[SETTINGS]))


async def confirm(request: web.Request) -> web.Response:
    """PUT /campaigns/{id}/confirm → 202: reserve the credit; sending starts now or at scheduledDate.

    Everything the reservation depends on is checked again with the campaign locked, in the transaction that
    reserves: its state, its priced version, and its recipients counted again (contacts imported into a list
    after calculateGoal would otherwise be sent for the price of the old count). The runner then sends to at
    most ``totalDestinations`` recipients, so what is reserved here bounds what the campaign can cost.
    """
    await _campaign(request)  # 404 and channel restrictions, before locking anything
    account = principal(request).account_id
    pool = get_pool(request.app)
    async with pool.acquire() as conn, conn.transaction():
        row = await store.lock(conn, account, _campaign_id(request))
        if row is None:
            raise NotFound("no such campaign in this account")
        if row["status"] not in (0, 1) or row["confirmed_at"] is not None:
            raise BadRequest("the campaign is already confirmed")
        _complete(row)
        if not row["ready_to_send"]:
            raise BadRequest("set readyToSend to true first (PUT /campaigns/{id})")
        if row["goal_calculated_at"] is None or row["goal_fingerprint"] != _fingerprint(row):
            raise BadRequest("the cost is not calculated for the campaign as it is: run calculateGoal")
        if not row["total_destinations"]:
            raise BadRequest("the campaign has no recipients")
        if row["destination_type"] == 1:
            now = await store.count_recipients(conn, account, list(row["contact_list_ids"]))
            if now != row["total_destinations"]:
                raise BadRequest(f"the lists have {now} recipients now, not the {row['total_destinations']} "
                                 "calculateGoal priced: run calculateGoal again")
        if not await store.confirm(conn, account, row["campaign_id"], row["price"]):
            raise BadRequest(f"insufficient credit: the campaign costs {row['price']} "
                             f"{request.app[SETTINGS].currency}")
    confirmed = await store.get(pool, account, row["campaign_id"])
    assert confirmed is not None
    return json_response(campaign_json(confirmed), status=202)


async def campaign_stats(request: web.Request) -> web.Response:
    """GET /campaigns/{id}/stats: sent/delivered/read/failed/expired/pending from the counters."""
    row = await _campaign(request)
    counts = await store.totals(get_pool(request.app), row["campaign_id"])
    total = sum(counts.values())
    return json_response({
        "id": row["campaign_id"], "status": row["status"], "totalDestinations": row["total_destinations"],
        "sent": total, "delivered": counts.get("DELIVERED", 0) + counts.get("READ", 0),
        "read": counts.get("READ", 0), "failed": counts.get("ERROR", 0), "expired": counts.get("EXPIRED", 0),
        "pending": counts.get("SENT", 0) + counts.get("RECEIVED", 0) + counts.get("UNKNOWN", 0),
        "byStatus": counts,
    })


async def stats(request: web.Request) -> web.Response:
    """GET /campaigns/stats?startDate=&endDate=&aggregateOn=&sendingMode=&isDraft=&page=&limit=&direction="""
    q = request.query
    try:
        start = dt.datetime.strptime(q.get("startDate", ""), "%Y-%m-%d").replace(tzinfo=dt.UTC)
        end = dt.datetime.strptime(q.get("endDate", ""), "%Y-%m-%d").replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    except ValueError:
        raise BadRequest("startDate and endDate are required, as yyyy-MM-dd") from None
    unit = q.get("aggregateOn", "day").lower()
    if unit not in ("hour", "day", "week", "month"):
        raise BadRequest("aggregateOn must be hour, day, week or month")
    mode = q.get("sendingMode")
    if mode is not None and mode not in ("SMS", "RCS", "WHATSAPP"):
        raise BadRequest("sendingMode must be SMS, RCS or WHATSAPP")
    direction = q.get("direction", "ASC").upper()
    if direction not in ("ASC", "DESC"):
        raise BadRequest("direction must be ASC or DESC")
    is_draft = q.get("isDraft", "false").lower()
    if is_draft not in ("true", "false"):
        raise BadRequest("isDraft must be true or false")
    try:
        page, limit = int(q.get("page", "0")), int(q.get("limit", "100"))
    except ValueError:
        raise BadRequest("page and limit must be integers") from None
    if page < 0 or not 1 <= limit <= 1000:
        raise BadRequest("page >= 0 and limit 1..1000")
    if is_draft == "true":  # drafts never sent anything: they have no counters
        return json_response([])
    if mode is not None:
        require_channel(request, mode)
    channels = [mode] if mode is not None else key_channels(request)
    rows = await store.period_stats(get_pool(request.app), principal(request).account_id, unit, start, end,
                                    channels)
    buckets: dict[dt.datetime, dict[str, int]] = {}
    for r in rows:
        buckets.setdefault(r["period"], {})[r["status"]] = int(r["n"])
    out = []
    for period in sorted(buckets, reverse=direction == "DESC"):
        c = buckets[period]
        out.append({
            "period": period.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z"),
            "total": sum(c.values()), "delivered": c.get("DELIVERED", 0) + c.get("READ", 0),
            "read": c.get("READ", 0), "failed": c.get("ERROR", 0), "expired": c.get("EXPIRED", 0),
            "pending": c.get("SENT", 0) + c.get("RECEIVED", 0) + c.get("UNKNOWN", 0),
        })
    first = params.offset(page, limit)
    return json_response(out[first:first + limit])


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the campaign routes."""
    app[SETTINGS] = settings
    app.router.add_post(BASE, create)
    app.router.add_get(BASE, list_campaigns)
    app.router.add_get(f"{BASE}/stats", stats)
    app.router.add_get(f"{BASE}/{{id}}", get_campaign)
    app.router.add_put(f"{BASE}/{{id}}", update)
    app.router.add_delete(f"{BASE}/{{id}}", delete)
    app.router.add_post(f"{BASE}/{{id}}/calculateGoal", calculate_goal)
    app.router.add_get(f"{BASE}/{{id}}/price", price)
    app.router.add_put(f"{BASE}/{{id}}/confirm", confirm)
    app.router.add_get(f"{BASE}/{{id}}/stats", campaign_stats)
