"""API keys (§10) and per-key rate limits that hold across api processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from support.isolated import free_port
from support.live import Account, LiveServer, wait_until

P = "/partner-gateway/v1"


class TestApiKeys:
    """Create (shown once), list (never the value), look up, restrict to channels, revoke at once."""

    async def test_lifecycle(self, http, server: LiveServer, account: Account) -> None:
        """A new key works at once, is listed without its value, and is refused right after revocation."""
        async with http.post(f"{server.url}{P}/authentication", headers=account.headers,
                             json={"name": "erp-integration", "description": "ERP"}) as r:
            assert r.status == 201
            created = await r.json()
        new = {"X-API-Key": created["apiKey"]}
        async with http.get(f"{server.url}{P}/authentication", headers=new) as r:
            listed = await r.json()
        assert created["id"] in {k["id"] for k in listed}
        assert all("apiKey" not in k for k in listed) and created["apiKey"] not in str(listed)
        async with http.get(f"{server.url}{P}/authentication/{created['apiKey']}", headers=account.headers) as r:
            assert r.status == 200 and (await r.json())["id"] == created["id"]
        async with http.delete(f"{server.url}{P}/authentication/{created['id']}", headers=account.headers) as r:
            assert r.status == 204
        async with http.get(f"{server.url}{P}/authentication", headers=new) as r:
            assert r.status == 401
        async with http.delete(f"{server.url}{P}/authentication/{created['id']}", headers=account.headers) as r:
            assert r.status == 404

    async def test_operations_restrict_channels(self, http, server: LiveServer, account: Account) -> None:
        """A key limited to SMS gets 403 on WhatsApp endpoints and works on SMS ones."""
        async with http.post(f"{server.url}{P}/authentication", headers=account.headers,
                             json={"operations": ["SMS"]}) as r:
            assert r.status == 201
            sms_only = {"X-API-Key": (await r.json())["apiKey"]}
        async with http.get(f"{server.url}{P}/messages/status/x", params={"channel": "WHATSAPP"},
                            headers=sms_only) as r:
            assert r.status == 403 and (await r.json())["status"] == 403
        async with http.get(f"{server.url}{P}/whatsapp/messages/x/status", headers=sms_only) as r:
            assert r.status == 403
        async with http.get(f"{server.url}{P}/messages/status/x", params={"channel": "SMS"}, headers=sms_only) as r:
            assert r.status == 404

    @pytest.mark.parametrize("body", [{"operations": []}, {"operations": ["FAX"]}, {"name": 5}, [1]])
    async def test_invalid_bodies(self, http, server: LiveServer, account: Account, body: Any) -> None:
        """Invalid create bodies are 400 with the JSON error body."""
        async with http.post(f"{server.url}{P}/authentication", headers=account.headers, json=body) as r:
            assert r.status == 400 and (await r.json())["error"] == "Bad Request"

    async def test_other_accounts_key_is_404(self, http, server: LiveServer, account: Account,
                                            other_account: Account) -> None:
        """Another account's key can be neither looked up nor revoked."""
        async with http.get(f"{server.url}{P}/authentication/{other_account.key}", headers=account.headers) as r:
            assert r.status == 404
        async with http.get(f"{server.url}{P}/authentication", headers=other_account.headers) as r:
            assert r.status == 200
            (other_key_id,) = [k["id"] for k in await r.json()]
        async with http.delete(f"{server.url}{P}/authentication/{other_key_id}", headers=account.headers) as r:
            assert r.status == 404
            assert (await r.json())["status"] == 404
        async with http.get(f"{server.url}{P}/authentication", headers=other_account.headers) as r:
            assert r.status == 200, "another account revoked this key"


class TestKeyOwners:
    """A key may belong to a user of its account: ``userId`` at creation, the list filters on it, and every
    entry names the owner and the plan its traffic is counted under."""

    @staticmethod
    async def user(db: asyncpg.Pool, account: Account, name: str) -> int:
        return int(await db.fetchval("insert into users (account_id, name) values ($1, $2) returning user_id",
                                     account.id, name))

    async def create(self, http, server: LiveServer, account: Account, body: Any) -> tuple[int, Any]:
        async with http.post(f"{server.url}{P}/authentication", headers=account.headers, json=body) as r:
            return r.status, await r.json()

    async def listed(self, http, server: LiveServer, account: Account, **query: str) -> tuple[int, Any]:
        async with http.get(f"{server.url}{P}/authentication", headers=account.headers, params=query) as r:
            return r.status, await r.json()

    async def test_owner_filter_and_entry_fields(self, http, server: LiveServer, db: asyncpg.Pool,
                                                 account: Account) -> None:
        """Keys of two users and one without an owner: the filter returns each user's exactly; the entries carry
        userId, username and trafficType, on creation, in the list and on lookup."""
        ada, bob = await self.user(db, account, "Ada"), await self.user(db, account, "Bob")
        status, a1 = await self.create(http, server, account, {"name": "a1", "userId": ada})
        assert status == 201, a1
        assert (a1["userId"], a1["username"], a1["trafficType"]) == (ada, "Ada", "PRODUCTION")
        _, a2 = await self.create(http, server, account, {"name": "a2", "userId": ada})
        _, b1 = await self.create(http, server, account, {"name": "b1", "userId": bob})
        _, none = await self.create(http, server, account, {"name": "nobody's"})
        assert (none["userId"], none["username"]) == (None, None)

        status, everything = await self.listed(http, server, account)
        assert status == 200
        assert {k["id"] for k in everything} >= {a1["id"], a2["id"], b1["id"], none["id"]}
        assert {k["id"]: k["username"] for k in everything if k["userId"]} == \
            {a1["id"]: "Ada", a2["id"]: "Ada", b1["id"]: "Bob"}
        _, of_ada = await self.listed(http, server, account, userId=str(ada))
        assert [k["id"] for k in of_ada] == [a1["id"], a2["id"]]
        _, of_bob = await self.listed(http, server, account, userId=str(bob))
        assert [k["id"] for k in of_bob] == [b1["id"]]
        _, of_stranger = await self.listed(http, server, account, userId=str(bob + 1000))
        assert of_stranger == []
        async with http.get(f"{server.url}{P}/authentication/{b1['apiKey']}", headers=account.headers) as r:
            assert (await r.json())["username"] == "Bob"

    async def test_trial_plan_is_the_traffic_type(self, http, server: LiveServer, db: asyncpg.Pool,
                                                  account: Account) -> None:
        """trafficType follows the account's plan."""
        await db.execute("update accounts set plan = 'trial' where account_id = $1", account.id)
        _, listed = await self.listed(http, server, account)
        assert {k["trafficType"] for k in listed} == {"TRIAL"}

    async def test_another_accounts_user_cannot_own_a_key(self, http, server: LiveServer, db: asyncpg.Pool,
                                                          account: Account, other_account: Account) -> None:
        """userId of another account's user (or of nobody) is a 404 naming it, and no key is made."""
        theirs = await self.user(db, other_account, "Mallory")
        before = await db.fetchval("select count(*) from api_keys")
        for owner in (theirs, theirs + 1000):
            status, body = await self.create(http, server, account, {"userId": owner})
            assert status == 404 and body["message"] == f"userId {owner} is not a user of this account", body
        assert await db.fetchval("select count(*) from api_keys") == before
        _, of_theirs = await self.listed(http, server, other_account, userId=str(theirs))
        assert of_theirs == []

    @pytest.mark.parametrize("owner", ["x", 0, -1, 1.5, True, 2**63])
    async def test_invalid_owner_in_body(self, http, server: LiveServer, account: Account, owner: Any) -> None:
        """A userId that is not a positive 64-bit integer is a 400."""
        status, body = await self.create(http, server, account, {"userId": owner})
        assert status == 400 and body["message"].startswith("userId must be an integer"), body

    @pytest.mark.parametrize("query", ["abc", "", "0", "1.5"])
    async def test_invalid_owner_filter(self, http, server: LiveServer, account: Account, query: str) -> None:
        """A userId filter that is not a positive integer is a 400, not an unfiltered list."""
        status, body = await self.listed(http, server, account, userId=query)
        assert status == 400 and "userId" in body["message"], body

    async def test_deleting_the_user_keeps_the_key(self, http, server: LiveServer, db: asyncpg.Pool,
                                                   account: Account) -> None:
        """A key outlives its owner: it still authenticates, without an owner."""
        ada = await self.user(db, account, "Ada")
        _, key = await self.create(http, server, account, {"userId": ada})
        await db.execute("delete from users where user_id = $1", ada)
        async with http.get(f"{server.url}{P}/authentication", headers={"X-API-Key": key["apiKey"]}) as r:
            assert r.status == 200
            assert [(k["userId"], k["username"]) for k in await r.json() if k["id"] == key["id"]] == [(None, None)]


class TestRateLimitHeaders:
    """Every authenticated response says where the caller stands."""

    async def test_headers_on_success_and_error(self, http, server: LiveServer, account: Account) -> None:
        """X-RateLimit-* are present on a 200 and on a 404, and Remaining decreases."""
        async with http.get(f"{server.url}{P}/authentication", headers=account.headers) as r:
            assert r.status == 200
            first = int(r.headers["X-RateLimit-Remaining"])
            assert r.headers["X-RateLimit-Limit"] == "1000" and int(r.headers["X-RateLimit-Reset"]) > 0
        async with http.get(f"{server.url}{P}/messages/status/x", params={"channel": "SMS"},
                            headers=account.headers) as r:
            assert r.status == 404
            assert int(r.headers["X-RateLimit-Remaining"]) < first


#: One minute allows 6 requests; the burst is out of the way. 7 requests split 4 + 3 between two processes are
#: one too many for a shared count, and within each process's allowance for a per-process count.
PER_MINUTE = 6


@pytest.fixture(scope="module")
def two_api_processes(infra: tuple[str, str]) -> Iterator[list[str]]:
    """Two separate api processes on the same database, on free ports, counting every request in Postgres as
    it comes (``QLARA_RATE_LIMIT_SYNC_MS=0``; the default, in-memory counting is test_key_cache.py's)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
           "QLARA_DATABASE_URL": infra[1], "QLARA_KAFKA_BOOTSTRAP": infra[0], "QLARA_LOG_LEVEL": "warning",
           "QLARA_RATE_LIMIT_PLANS": f"trial:{PER_MINUTE}/1000", "QLARA_URL_SIGNING_KEY": "test-url-signing-key",
           "QLARA_RATE_LIMIT_SYNC_MS": "0"}
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "qlara_events.cli", "serve", "--role", "api"],
                              env={**env, "QLARA_HTTP_PORT": str(port)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for port in ports]
    yield [f"http://127.0.0.1:{port}" for port in ports]
    for p in procs:
        p.terminate()
        p.wait(timeout=20)


@pytest_asyncio.fixture
async def trial_account(db: asyncpg.Pool, account: Account) -> AsyncIterator[Account]:
    await db.execute("update accounts set plan = 'trial' where account_id = $1", account.id)
    yield account


class TestRateLimitAcrossProcesses:
    """The limit is per key, not per process: exactly, when every request is counted in Postgres."""

    async def test_minute_shared_by_two_processes(self, http: aiohttp.ClientSession, db: asyncpg.Pool,
                                                  two_api_processes: list[str], trial_account: Account) -> None:
        """7 requests in one minute, alternating between two processes, against 6 a minute: exactly one 429,
        and the key's shared minute window counted the 6 allowed."""
        for url in two_api_processes:
            async def up(u: str = url) -> bool:
                try:
                    async with http.get(f"{u}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(up, timeout=60, what=f"{url} to serve")

        async def early_in_a_minute() -> bool:
            return time.time() % 60 < 40  # 20 s left for 7 requests: they all fall in one window

        await wait_until(early_in_a_minute, timeout=30, what="the start of a minute")
        minute = int(time.time()) // 60 * 60
        results = []
        for i in range(PER_MINUTE + 1):
            async with http.get(f"{two_api_processes[i % 2]}{P}/authentication", headers=trial_account.headers) as r:
                body = await r.json()
                results.append(r.status)
                if r.status == 429:
                    assert body["retryAfter"] >= 1 and r.headers["Retry-After"] == str(body["retryAfter"])
                    assert body["error"] == "Too Many Requests"
        assert int(time.time()) // 60 * 60 == minute, "the requests straddled a minute; the test proves nothing"
        assert results == [200] * PER_MINUTE + [429], results
        # The shared window (migration 014) counts allowed requests only: the six from both processes.
        counted = await db.fetchval(
            "select w.m_count from rate_windows w join api_keys k using (key_id)"
            " where k.account_id = $1 and w.m_start = $2", trial_account.id, minute)
        assert counted == PER_MINUTE
