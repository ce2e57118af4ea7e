"""API keys (Qlara §10): list, look up, create (shown once), revoke (immediate).

A key may have an owner, a user of its account (``userId`` at creation, the list's ``userId`` filter); each
entry carries the owner's ``username`` and the key's ``trafficType``, the rate-limit plan its requests are
counted under (``PRODUCTION`` or ``TRIAL``, Qlara §1.3: limits apply per key, by the account's plan).

Listing, looking up and revoking keys need an unrestricted key: a key limited to some channels could
otherwise revoke the account's other keys. A restricted key may create keys only within its own channels.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from aiohttp import web

from qlara_events.api import params
from qlara_events.api.auth import KEYS, PREFIX, get_pool, principal, require_unrestricted
from qlara_events.api.inbox import MAX_ID
from qlara_events.config import Settings
from qlara_events.domain.status import Channel
from qlara_events.errors import BadRequest, Conflict, Forbidden, NotFound
from qlara_events.http import json_object, json_response
from qlara_events.store import accounts

BASE: Final = f"{PREFIX}/authentication"
SETTINGS: Final = web.AppKey("keys_settings", Settings)


def key_json(r: asyncpg.Record) -> dict[str, Any]:
    """A key's metadata; its value is never stored, so it can never be returned."""
    return {
        "id": r["key_id"],
        "name": r["name"],
        "description": r["description"],
        "prefix": r["key_prefix"],
        "operations": list(r["operations"]) if r["operations"] else None,
        "userId": r["owner_user_id"],
        "username": r["owner_name"],
        "trafficType": r["plan"].upper(),
        "status": "ACTIVE",
        "createdAt": r["created_at"].isoformat().replace("+00:00", "Z"),
    }


async def list_keys(request: web.Request) -> web.Response:
    """GET /authentication[?userId=]: the account's active keys, only that user's when ``userId`` is given."""
    require_unrestricted(request, "managing API keys")
    owner = params.query_int(request.query, "userId", 0, 1, MAX_ID) if "userId" in request.query else None
    rows = await accounts.list_keys(get_pool(request.app), principal(request).account_id, owner)
    return json_response([key_json(r) for r in rows])


async def get_key(request: web.Request) -> web.Response:
    """GET /authentication/{value}: look a key up by its raw value (404 unless it is this account's)."""
    require_unrestricted(request, "managing API keys")
    row = await accounts.key_by_value(get_pool(request.app), principal(request).account_id,
                                      request.match_info["value"])
    if row is None:
        raise NotFound("no active key with this value in the account")
    return json_response(key_json(row))


def _optional_text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest(f"{name} must be a string of at most {limit} characters")
    return value


async def create_key(request: web.Request) -> web.Response:
    """POST /authentication: a new key, returned once in ``apiKey``."""
    body = await json_object(request, empty_is_object=True)
    operations = body.get("operations")
    ops: list[str] | None = None
    if operations is not None:
        if not isinstance(operations, list) or not operations or \
                not all(isinstance(o, str) and o in Channel.__members__ for o in operations):
            raise BadRequest("operations must be a non-empty array of SMS, RCS, WHATSAPP")
        ops = sorted(set(operations))
    caller = principal(request).operations
    if caller is not None:
        # A restricted key delegates at most what it holds; without operations the new key inherits its channels.
        if ops is None:
            ops = sorted(caller)
        elif not caller.issuperset(ops):
            raise Forbidden("operations must be a subset of this API key's: " + ", ".join(sorted(caller)))
    owner = None
    if body.get("userId") is not None:
        owner = params.json_int(body["userId"], 1, MAX_ID)
        if owner is None:
            raise BadRequest(f"userId must be an integer between 1 and {MAX_ID}: the id of a user of the account")
    cap = request.app[SETTINGS].api_keys_per_account
    try:
        created = await accounts.create_key_capped(
            get_pool(request.app), principal(request).account_id, cap, name=_optional_text(body, "name", 200),
            operations=ops, description=_optional_text(body, "description", 1000), owner=owner)
    except accounts.UnknownOwner:
        raise NotFound(f"userId {owner} is not a user of this account") from None
    if created is None:
        # Each key has its own rate limit: unlimited keys would mean an unlimited rate for the account.
        raise Conflict(f"the account already has {cap} active API keys, the most it may hold; revoke one first")
    raw, row = created
    return json_response({**key_json(row), "apiKey": raw}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    """DELETE /authentication/{id}: revoke now; the next request with the key is a 401."""
    require_unrestricted(request, "managing API keys")
    key_id = request.match_info["value"]
    if not await accounts.revoke(get_pool(request.app), principal(request).account_id, key_id):
        raise NotFound("no active key with this id in the account")
    cache = request.app.get(KEYS)
    if cache is not None:  # -- this process at once; every other one by migration 017's notification
        cache.invalidate(f"k:{key_id}")
    return web.Response(status=204)


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the key routes."""
    app[SETTINGS] = settings
    app.router.add_get(BASE, list_keys)
    app.router.add_post(BASE, create_key)
    app.router.add_get(f"{BASE}/{{value}}", get_key)
    app.router.add_delete(f"{BASE}/{{value}}", revoke_key)
