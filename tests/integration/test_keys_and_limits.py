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
