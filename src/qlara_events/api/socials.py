"""Social profiles (Qlara §11): read-only views of the connections made through the dashboard's OAuth."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import asyncpg
from aiohttp import web

from qlara_events.api.auth import PREFIX, get_pool, principal
from qlara_events.errors import BadRequest, NotFound
from qlara_events.http import json_response
from qlara_events.store import socials as store

BASE: Final = f"{PREFIX}/socials"


def _ts(v: dt.datetime | None) -> str | None:
    return None if v is None else v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def profile_json(r: asyncpg.Record, *, details: bool) -> dict[str, Any]:
    """A connected profile; ``disconnected`` when its token expired or was revoked."""
    now = dt.datetime.now(dt.UTC)
    expired = r["token_expires_at"] is not None and r["token_expires_at"] <= now
    out: dict[str, Any] = {
        "platform": r["platform"], "profileId": r["profile_id"], "username": r["username"],
        "profileName": r["profile_name"], "profilePictureUrl": r["picture_url"],
        "phoneNumber": r["phone_number"], "connectedAt": _ts(r["connected_at"]),
        "tokenExpiresAt": _ts(r["token_expires_at"]),
        "disconnected": expired or r["revoked_at"] is not None,
        "status": "TOKEN_REVOKED" if r["revoked_at"] else "TOKEN_EXPIRED" if expired else "CONNECTED",
        "linkedPagesCount": len(r["pages"]),
    }
    if details:
        out["pages"] = r["pages"]
    return out


async def list_profiles(request: web.Request) -> web.Response:
    """GET /socials: every connected profile of the account."""
    rows = await store.list_for(get_pool(request.app), principal(request).account_id)
    return json_response([profile_json(r, details=False) for r in rows])


async def platform_profiles(request: web.Request) -> web.Response:
    """GET /socials/{platform}: full details, linked pages included (404 when nothing is connected)."""
    platform = request.match_info["platform"].lower()
    if platform not in store.PLATFORMS:
        raise BadRequest("platform must be one of " + ", ".join(store.PLATFORMS))
    rows = await store.list_for(get_pool(request.app), principal(request).account_id, platform)
    if not rows:
        raise NotFound(f"no {platform} profile is connected to this account")
    return json_response([profile_json(r, details=True) for r in rows])


def add_routes(app: web.Application) -> None:
    """Register the social-profile routes."""
    app.router.add_get(BASE, list_profiles)
    app.router.add_get(f"{BASE}/{{platform}}", platform_profiles)
