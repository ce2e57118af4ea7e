"""The batch status read (issue #17 item 2): 500 ids of the longest kind, one request, one query."""

from __future__ import annotations

import aiohttp
import asyncpg

from qlara_events.domain.events import MAX_ID_LENGTH

from support.isolated import api_process
from support.live import Account, LiveServer, uid

P = "/partner-gateway/v1"


async def _insert(db: asyncpg.Pool, account: Account, ids: list[str]) -> None:
    await db.execute(
        "insert into messages (message_id, account_id, channel, customer_message_id, provider, provider_message_id,"
        " destination, sender, status, status_rank, submitted_at)"
        " select 'm-' || c, $1, 'SMS', c, 'twilio', 'p-' || c, '+393331112233', 'QLARA', 'DELIVERED', 4, now()"
        " from unnest($2::text[]) as c", account.id, ids)


def _ids(n: int) -> list[str]:
    """``n`` distinct ids of the greatest length, with characters a query string must percent-encode."""
    return [f"{uid()}/{i}:" + "é" * (MAX_ID_LENGTH - 30) for i in range(n)]


async def _batch(http: aiohttp.ClientSession, base: str, account: Account, ids: list[str]) -> tuple[int, object]:
    async with http.get(f"{base}{P}/messages/status", params={"channel": "SMS", "ids": ",".join(ids)},
                        headers=account.headers) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


class TestBatchStatus:
    """The whole batch is answered, known ids only, whatever the request line's length."""

    async def test_500_longest_ids(self, http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool,
                                   account: Account) -> None:
        """500 ids of 200 characters (a request line of ~200 KB, encoded): 400 known ones are answered."""
        ids = _ids(500)
        await _insert(db, account, ids[:400])
        status, body = await _batch(http, server.url, account, ids)
        assert status == 200, str(body)[:300]
        assert isinstance(body, list) and sorted(b["customerMessageId"] for b in body) == sorted(ids[:400])

    async def test_501_ids_refused(self, http: aiohttp.ClientSession, server: LiveServer, account: Account) -> None:
        """One id more than the documented 500 is a 400 with the JSON error body, not a parser error."""
        status, body = await _batch(http, server.url, account, _ids(501))
        assert status == 400 and isinstance(body, dict) and "at most 500" in body["message"]

    async def test_served_process_accepts_the_batch(self, http: aiohttp.ClientSession, infra: tuple[str, str],
                                                    db: asyncpg.Pool, account: Account) -> None:
        """``serve --role api`` (the deployed server, not the tests' in-process one) takes the same request."""
        ids = _ids(500)
        await _insert(db, account, ids[:3])
        async with api_process(http, kafka=infra[0], database_url=infra[1]) as api:
            status, body = await _batch(http, api.base, account, ids)
        assert status == 200 and isinstance(body, list) and len(body) == 3, str(body)[:300]
