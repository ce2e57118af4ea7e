"""Social profiles: registered by operators (CLI), read through the API, tokens sealed at rest."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys

import asyncpg
import orjson

from qlara_events.secrets_box import open_, parse_key
from qlara_events.store import socials

from support.live import Account, LiveServer

P = "/partner-gateway/v1"


async def cli(server: LiveServer, *args: str) -> bytes:
    env = {**os.environ, "QLARA_DATABASE_URL": server.settings.database_url,
           "QLARA_SOCIAL_TOKEN_KEY": server.settings.social_token_key or ""}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "qlara_events.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out


class TestSocials:
    """Connections made by the operator CLI appear in the API; expiry and revocation show as disconnected."""

    async def test_connect_list_details_revoke(self, http, server: LiveServer, db: asyncpg.Pool,
                                               account: Account, other_account: Account) -> None:
        """connect → listed with its pages count; the token is sealed in the database; revoke → disconnected."""
        future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
        await cli(server, "socials", "connect", "--account", account.id, "--platform", "facebook",
                  "--profile-id", "fb-1", "--token", "EAAG-long-lived-token", "--expires-at", future,
                  "--username", "qlara.shop", "--name", "Qlara Shop",
                  "--pages", orjson.dumps([{"id": "p1", "name": "Shop IT"}, {"id": "p2", "name": "Shop EN"}]).decode())
        async with http.get(f"{server.url}{P}/socials", headers=account.headers) as r:
            [profile] = await r.json()
        assert profile["platform"] == "facebook" and profile["disconnected"] is False
        assert profile["linkedPagesCount"] == 2 and "pages" not in profile
        async with http.get(f"{server.url}{P}/socials/facebook", headers=account.headers) as r:
            [details] = await r.json()
        assert [p["id"] for p in details["pages"]] == ["p1", "p2"]

        sealed = await socials.sealed_token(db, account.id, "facebook", "fb-1")
        assert sealed is not None and b"EAAG-long-lived-token" not in sealed
        key = parse_key(server.settings.social_token_key or "")
        assert open_(key, sealed, socials.token_context(account.id, "facebook", "fb-1")) == "EAAG-long-lived-token"

        await cli(server, "socials", "revoke", "--account", account.id, "--platform", "facebook",
                  "--profile-id", "fb-1")
        async with http.get(f"{server.url}{P}/socials", headers=account.headers) as r:
            [profile] = await r.json()
        assert profile["disconnected"] is True and profile["status"] == "TOKEN_REVOKED"
        async with http.get(f"{server.url}{P}/socials", headers=other_account.headers) as r:
            assert await r.json() == []

    async def test_expired_token_is_disconnected(self, http, server: LiveServer, db: asyncpg.Pool,
                                                 account: Account) -> None:
        """A token past its expiry reports disconnected / TOKEN_EXPIRED."""
        key = parse_key(server.settings.social_token_key or "")
        await socials.connect(db, key, account_id=account.id, platform="instagram", profile_id="ig-1",
                              token="t", expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        async with http.get(f"{server.url}{P}/socials/instagram", headers=account.headers) as r:
            [profile] = await r.json()
        assert profile["disconnected"] is True and profile["status"] == "TOKEN_EXPIRED"

    async def test_errors(self, http, server: LiveServer, account: Account) -> None:
        """Unknown platform 400; nothing connected 404; no key 401."""
        async with http.get(f"{server.url}{P}/socials/myspace", headers=account.headers) as r:
            assert r.status == 400
        async with http.get(f"{server.url}{P}/socials/tiktok", headers=account.headers) as r:
            assert r.status == 404
        async with http.get(f"{server.url}{P}/socials") as r:
            assert r.status == 401
