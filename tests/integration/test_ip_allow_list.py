"""Per-account IP allow-lists (Qlara §1.2; issue #12 item 2): a request with the account's key from an address
outside its list gets 403 with the JSON error body, whichever way the key is sent. The list is managed with
`qlara-events accounts allow-ip`; a change reaches every api process through the key cache's notifications.
X-Forwarded-For names the client only when the socket's peer is a trusted proxy (QLARA_TRUSTED_PROXIES)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest_asyncio

from support.live import Account, LiveServer, serve
from support.settings import make_settings

P = "/partner-gateway/v1"


async def allow_ip(settings: Any, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """Run the CLI with --json; (exit code, its JSON or None, stderr)."""
    env = {**os.environ, "QLARA_DATABASE_URL": settings.database_url, "QLARA_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qlara_events.cli", "accounts", "allow-ip", *args, "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, orjson.loads(out) if out.strip() else None, err.decode()


async def status_of(http: aiohttp.ClientSession, server: LiveServer, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.get(f"{server.url}{P}/authentication", headers=headers) as r:
        return r.status, await r.json()


@pytest_asyncio.fixture(scope="module")
async def behind_proxy(infra: tuple[str, str], db: Any) -> AsyncIterator[LiveServer]:
    """An api that trusts loopback as its reverse proxy."""
    async with serve(make_settings(*infra, QLARA_TRUSTED_PROXIES="127.0.0.0/8"), ["api"]) as live:
        yield live


class TestAllowList:
    async def test_outside_the_list_is_403_until_the_address_is_added(
            self, http, server: LiveServer, settings, db: asyncpg.Pool, account: Account,
            other_account: Account) -> None:
        """The key works (and is cached); a list without loopback refuses it at once, with X-API-Key and with
        Basic; adding loopback admits it again; emptying the list lifts the restriction. Another account's key
        is never affected."""
        assert (await status_of(http, server, account.headers))[0] == 200
        code, out, err = await allow_ip(settings, "--account", account.id, "--add", "192.0.2.0/24")
        assert code == 0, err
        assert out == {"accountId": account.id, "networks": ["192.0.2.0/24"]}
        status, body = await status_of(http, server, account.headers)
        assert status == 403, body
        assert body["status"] == 403 and "127.0.0.1" in body["message"] and "allow-list" in body["message"]
        basic = {"Authorization": "Basic " + base64.b64encode(f"user:{account.key}".encode()).decode()}
        assert (await status_of(http, server, basic))[0] == 403
        assert (await status_of(http, server, other_account.headers))[0] == 200

        code, out, _ = await allow_ip(settings, "--account", account.id, "--add", "127.0.0.1")
        assert out == {"accountId": account.id, "networks": ["127.0.0.1/32", "192.0.2.0/24"]}
        assert (await status_of(http, server, account.headers))[0] == 200

        await allow_ip(settings, "--account", account.id, "--remove", "127.0.0.1")
        assert (await status_of(http, server, account.headers))[0] == 403
        code, out, _ = await allow_ip(settings, "--account", account.id, "--remove", "192.0.2.0/24")
        assert out == {"accountId": account.id, "networks": []}
        assert (await status_of(http, server, account.headers))[0] == 200

    async def test_a_forged_forwarded_for_is_ignored_without_trusted_proxies(
            self, http, server: LiveServer, settings, account: Account) -> None:
        """The attack: the key is used from outside the list, claiming an address on it."""
        await allow_ip(settings, "--account", account.id, "--add", "198.51.100.0/24")
        for forged in ("198.51.100.7", "198.51.100.7, 198.51.100.8"):
            status, body = await status_of(http, server, {**account.headers, "X-Forwarded-For": forged})
            assert status == 403, body
        async with http.get(f"{server.url}{P}/authentication",
                            headers={**account.headers, "Forwarded": "for=198.51.100.7",
                                     "X-Real-IP": "198.51.100.7"}) as r:
            assert r.status == 403

    async def test_a_refused_request_uses_none_of_the_keys_allowance(
            self, http, server: LiveServer, settings, account: Account) -> None:
        """403s come before the rate limit: the key's remaining count is what it was."""
        async with http.get(f"{server.url}{P}/authentication", headers=account.headers) as r:
            before = int(r.headers["X-RateLimit-Remaining"])
        await allow_ip(settings, "--account", account.id, "--add", "192.0.2.1")
        for _ in range(5):
            async with http.get(f"{server.url}{P}/authentication", headers=account.headers) as r:
                assert r.status == 403 and "X-RateLimit-Remaining" not in r.headers
        await allow_ip(settings, "--account", account.id, "--add", "127.0.0.1")
        async with http.get(f"{server.url}{P}/authentication", headers=account.headers) as r:
            # Counted, the five 403s would leave before - 6 (a window moving on meanwhile only gives back).
            assert int(r.headers["X-RateLimit-Remaining"]) >= before - 1


class TestBehindATrustedProxy:
    async def test_the_client_is_the_address_the_proxy_appended(
            self, http, behind_proxy: LiveServer, settings, account: Account) -> None:
        """From a trusted peer, the right-most untrusted X-Forwarded-For entry is judged; what a client put
        further left (a spoof relayed by the proxy) is not; a garbage entry is refused."""
        await allow_ip(settings, "--account", account.id, "--add", "198.51.100.0/24")
        h = account.headers
        assert (await status_of(http, behind_proxy, {**h, "X-Forwarded-For": "198.51.100.7"}))[0] == 200
        assert (await status_of(http, behind_proxy, {**h, "X-Forwarded-For": "198.51.100.7, 127.0.0.9"}))[0] == 200
        status, body = await status_of(http, behind_proxy, {**h, "X-Forwarded-For": "198.51.100.7, 203.0.113.5"})
        assert status == 403 and "203.0.113.5" in body["message"], body
        assert (await status_of(http, behind_proxy, {**h, "X-Forwarded-For": "198.51.100.7, nonsense"}))[0] == 403
        # No header: the proxy itself (loopback) is the client, and it is not on the list.
        assert (await status_of(http, behind_proxy, h))[0] == 403


class TestCli:
    async def test_errors_are_one_line(self, settings, db: asyncpg.Pool, account: Account) -> None:
        """An unknown account or a malformed network: exit 1, one line naming it, no traceback, nothing changed."""
        code, out, err = await allow_ip(settings, "--account", "no-such-account", "--add", "192.0.2.1")
        assert (code, out) == (1, None) and err.strip() == "qlara-events accounts allow-ip: no account no-such-account"
        for bad in ("abc", "10.1.2.3/16", "192.0.2.0/33"):
            code, out, err = await allow_ip(settings, "--account", account.id, "--add", bad)
            assert code == 1 and out is None and len(err.strip().splitlines()) == 1 and bad in err, err
            assert "Traceback" not in err
        assert await db.fetchval("select count(*) from account_networks where account_id = $1", account.id) == 0
        code, out, _ = await allow_ip(settings, "--account", account.id)
        assert (code, out) == (0, {"accountId": account.id, "networks": []})
