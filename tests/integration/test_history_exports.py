"""Message history and export jobs against real Postgres: filters, durable jobs, signed CSV downloads."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import aiohttp
import asyncpg
import pytest

from qlara_events.store import accounts

from support.isolated import api_process, isolated_database, vmhwm_kib
from support.live import Account, LiveServer, uid, wait_until

P = "/partner-gateway/v1"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


async def seed(db: asyncpg.Pool | asyncpg.Connection, account: Account, n: int, *, channel: str = "SMS",
               start: dt.datetime = T0, campaign: str | None = None, status: str = "DELIVERED") -> list[str]:
    """n messages one minute apart (inserted directly: the projector is tested elsewhere)."""
    prefix = uid("h-")
    await db.execute(
        "insert into messages (message_id, account_id, channel, customer_message_id, provider, provider_message_id,"
        " destination, sender, campaign_id, status, status_rank, description, submitted_at, sent_at, delivered_at)"
        " select $2 || i, $1, $3, 'c-' || $2 || i, 'twilio', 'pm-' || $2 || i, '+39333' || lpad(i::text, 7, '0'),"
        " 'QLARA', $6, $7, case when $7 = 'DELIVERED' then 4 else 3 end, 'seeded',"
        " $4::timestamptz + make_interval(mins => i), $4::timestamptz + make_interval(mins => i),"
        " $4::timestamptz + make_interval(mins => i, secs => 5)"
        " from generate_series(0, $5 - 1) as i", account.id, prefix, channel, start, n, campaign, status)
    return [f"{prefix}{i}" for i in range(n)]


async def history(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                  **params: str) -> tuple[int, Any]:
    async with http.get(f"{server.url}{P}/messages/history", params=params, headers=account.headers) as r:
        return r.status, await r.json()


async def finished(http: aiohttp.ClientSession, base: str, account: Account, export_id: int,
                   timeout: float = 60) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with http.get(f"{base}{P}/exports", headers=account.headers, params={"limit": "50"}) as r:
            jobs = {j["id"]: j for j in await r.json()}
        job = jobs[export_id]
        return job if job["status"] in ("COMPLETED", "FAILED") else None

    return await wait_until(probe, timeout=timeout, what=f"export {export_id} to finish")


class TestHistory:
    """GET /messages/history: one channel, a mandatory-offset window, optional status, pages of 20."""

    async def test_window_status_and_pages(self, http, server, db, account, other_account) -> None:
        """The window is inclusive, pages are stable and oldest first, status filters, tenancy holds."""
        ids = await seed(db, account, 30)
        failed = await seed(db, account, 2, start=T0 + dt.timedelta(minutes=5, seconds=30), status="ERROR")
        window = {"channel": "SMS", "from": T0.isoformat(), "to": (T0 + dt.timedelta(minutes=29)).isoformat()}
        status, first = await history(http, server, account, **window)
        assert status == 200 and len(first) == 20
        status, second = await history(http, server, account, **window, page="1")
        got = [m["messageId"] for m in first + second]
        assert set(got) == set(ids) | set(failed) and len(got) == 32
        assert [m["submittedAt"] for m in first + second] == sorted(m["submittedAt"] for m in first + second)
        status, errors = await history(http, server, account, **window, status="ERROR")
        assert sorted(m["messageId"] for m in errors) == sorted(failed)
        status, one = await history(http, server, account, channel="SMS", **{"from": T0.isoformat(),
                                                                             "to": T0.isoformat()})
        assert [m["messageId"] for m in one] == [ids[0]]
        assert (await history(http, server, other_account, **window))[1] == []
        assert (await history(http, server, account, **{**window, "channel": "WHATSAPP"}))[1] == []
        assert (await history(http, server, account, **{**window, "from": window["to"], "to": window["from"]}))[1] == []

    @pytest.mark.parametrize("params", [
        {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},                      # no channel
        {"channel": "FAX", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"},
        {"channel": "SMS", "from": "2026-03-01", "to": "2026-03-02T00:00:00Z"},              # date only
        {"channel": "SMS", "from": "2026-03-01T00:00:00", "to": "2026-03-02T00:00:00Z"},     # no offset
        {"channel": "SMS", "from": "2026-03-01T00:00:00Z"},                                  # no to
        {"channel": "SMS", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "status": "LOST"},
        {"channel": "SMS", "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z", "limit": "1001"},
    ])
    async def test_invalid(self, http, server, account, params) -> None:
        """Missing or malformed parameters are 400 with the JSON error body."""
        status, body = await history(http, server, account, **params)
        assert status == 400 and body["status"] == 400


class TestExports:
    """Exports are background jobs with signed, expiring downloads; they are durable and fail visibly."""

    async def test_history_export_round_trip(self, http, server, db, account) -> None:
        """The CSV holds exactly the API-originated messages of the window (campaign sends excluded)."""
        start = T0 + dt.timedelta(days=3)
        api_ids = await seed(db, account, 25, start=start)
        await seed(db, account, 5, start=start, campaign="camp-1")
        await seed(db, account, 3, start=start - dt.timedelta(days=1))  # outside the window
        body = {"startDateTime": start.isoformat(), "endDateTime": (start + dt.timedelta(hours=1)).isoformat()}
        async with http.post(f"{server.url}{P}/messages/history/export", json=body, headers=account.headers) as r:
            assert r.status == 202
            job = await r.json()
        assert job["status"] == "PENDING" and job["isAvailableForDownload"] is False
        done = await finished(http, server.url, account, job["id"])
        assert done["status"] == "COMPLETED" and done["rowCount"] == 25 and done["isAvailableForDownload"]
        async with http.get(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            link = await r.json()
        async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert sorted(row["messageId"] for row in rows) == sorted(api_ids)
        assert {"messageId", "channel", "destination", "deliveryStatus", "sendDate", "deliveryDate"} <= set(rows[0])

    async def test_history_export_channel_and_status_filters(self, http, server, db, account) -> None:
        """channel and status filter the export as they do GET /messages/history: only matching rows."""
        start = T0 + dt.timedelta(days=4)
        wanted = await seed(db, account, 3, start=start, channel="WHATSAPP", status="DELIVERED")
        await seed(db, account, 2, start=start, channel="WHATSAPP", status="ERROR")
        await seed(db, account, 4, start=start, channel="SMS", status="DELIVERED")
        body = {"startDateTime": start.isoformat(), "endDateTime": (start + dt.timedelta(hours=1)).isoformat(),
                "channel": "WHATSAPP", "status": "DELIVERED"}
        async with http.post(f"{server.url}{P}/messages/history/export", json=body, headers=account.headers) as r:
            assert r.status == 202
            job = await r.json()
        assert job["parameters"]["channel"] == "WHATSAPP" and job["parameters"]["status"] == "DELIVERED"
        done = await finished(http, server.url, account, job["id"])
        assert done["status"] == "COMPLETED" and done["rowCount"] == 3
        async with http.get(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            link = await r.json()
        async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert sorted(row["messageId"] for row in rows) == sorted(wanted)
        assert {(row["channel"], row["deliveryStatus"]) for row in rows} == {("WHATSAPP", "DELIVERED")}

    @pytest.mark.parametrize("body", [{"chanel": "SMS"}, {"channel": "FAX"}, {"status": "LOST"}])
    async def test_history_export_refuses_unknown_fields_and_bad_filters(self, http, server, account, body) -> None:
        """A misspelt field is a 400 naming it (not an unfiltered export); a bad channel or status is a 400."""
        window = {"startDateTime": T0.isoformat(), "endDateTime": (T0 + dt.timedelta(days=1)).isoformat()}
        async with http.post(f"{server.url}{P}/messages/history/export", json={**window, **body},
                             headers=account.headers) as r:
            assert r.status == 400
            error = await r.json()
        assert error["status"] == 400 and next(iter(body)) in error["message"]

    async def test_expiry_and_regeneration(self, http, server, db, account) -> None:
        """An expired export answers 400 and is listed EXPIRED; POST regenerates it."""
        await seed(db, account, 3, start=T0 + dt.timedelta(days=5))
        body = {"startDateTime": (T0 + dt.timedelta(days=5)).isoformat(),
                "endDateTime": (T0 + dt.timedelta(days=6)).isoformat()}
        async with http.post(f"{server.url}{P}/messages/history/export", json=body, headers=account.headers) as r:
            job = await r.json()
        await finished(http, server.url, account, job["id"])
        async with http.get(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            old_url = (await r.json())["url"].replace(server.settings.base_url, server.url)
        await db.execute("update exports set expires_at = now() - interval '1 second' where export_id = $1", job["id"])
        async with http.get(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            assert r.status == 400 and "expired" in (await r.json())["message"]
        async with http.get(f"{server.url}{P}/exports", headers=account.headers) as r:
            assert {j["id"]: j["status"] for j in await r.json()}[job["id"]] == "EXPIRED"
        async with http.post(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            assert r.status == 202
        done = await finished(http, server.url, account, job["id"])
        assert done["status"] == "COMPLETED" and done["rowCount"] == 3
        async with http.get(old_url) as r:
            assert r.status == 404  # the old file went with the regeneration

    async def test_durable_jobs(self, http, server, db, account) -> None:
        """A job whose worker died is resumed; one that failed too often ends FAILED, never PENDING."""
        params = {"startDateTime": T0.isoformat(), "endDateTime": (T0 + dt.timedelta(days=1)).isoformat()}
        resumed = await db.fetchval(
            "insert into exports (account_id, kind, params, attempts, lease_until, started_at)"
            " values ($1, 'MESSAGE_HISTORY', $2, 1, now() - interval '1 second', now()) returning export_id",
            account.id, params)
        exhausted = await db.fetchval(
            "insert into exports (account_id, kind, params, attempts, lease_until)"
            " values ($1, 'MESSAGE_HISTORY', $2, 3, now() - interval '1 second') returning export_id",
            account.id, params)
        assert (await finished(http, server.url, account, resumed))["status"] == "COMPLETED"
        failed = await finished(http, server.url, account, exhausted)
        assert failed["status"] == "FAILED" and "repeatedly" in failed["error"]
        async with http.get(f"{server.url}{P}/exports/{exhausted}", headers=account.headers) as r:
            assert r.status == 409

    async def test_delivery_reports_by_campaign(self, http, server, db, account, other_account) -> None:
        """A campaign's delivery-report export holds its receipts only: not another campaign's, not those of
        messages without a campaign, not another account's campaign of the same id."""
        campaign = uid("camp-dr-")
        ids = await seed(db, account, 4, campaign=campaign)
        others = [*await seed(db, account, 3, campaign=uid("camp-other-")), *await seed(db, account, 2),
                  *await seed(db, other_account, 2, campaign=campaign)]
        await db.execute(
            "insert into message_events (event_id, type, message_id, status, raw_status, effect, via, occurred_at,"
            " received_at, payload, provider) select 'ev-' || m, 'message.status', m, 'DELIVERED', 'delivered',"
            " 'applied', 'twilio', now(), now(), '{}'::jsonb, 'twilio' from unnest($1::text[]) as m", ids + others)
        async with http.post(f"{server.url}{P}/exports/delivery-reports", json={"campaignId": campaign},
                             headers=account.headers) as r:
            assert r.status == 202
            job = await r.json()
        done = await finished(http, server.url, account, job["id"])
        assert done["status"] == "COMPLETED" and done["rowCount"] == 4
        async with http.get(f"{server.url}{P}/exports/{job['id']}", headers=account.headers) as r:
            link = await r.json()
        async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
            assert r.status == 200
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert sorted(row["messageId"] for row in rows) == sorted(ids)
        assert {row["campaignId"] for row in rows} == {campaign}

    @pytest.mark.parametrize(("path", "body"), [
        ("/messages/history/export", {}), ("/messages/history/export", {"startDateTime": "2026-03-01"}),
        ("/exports/delivery-reports", {}), ("/exports/delivery-reports", {"campaignId": True}),
    ])
    async def test_invalid_requests(self, http, server, account, path, body) -> None:
        """Missing or malformed export requests are 400."""
        async with http.post(f"{server.url}{P}{path}", json=body, headers=account.headers) as r:
            assert r.status == 400

    async def test_other_accounts_export_and_bad_links(self, http, server, db, account, other_account) -> None:
        """Another account's export is 404; a forged download link is 401."""
        body = {"startDateTime": T0.isoformat(), "endDateTime": T0.isoformat()}
        async with http.post(f"{server.url}{P}/messages/history/export", json=body, headers=account.headers) as r:
            job = await r.json()
        for method in ("GET", "POST"):
            async with http.request(method, f"{server.url}{P}/exports/{job['id']}", headers=other_account.headers) as r:
                assert r.status == 404
        async with http.get(f"{server.url}/files/exports/xabc?expires=9999999999&signature=00") as r:
            assert r.status == 401


class TestLargeExport:
    """200,000 history rows export with flat memory (peak RSS of the api process doing it)."""

    async def test_200k_rows_bounded_memory(self, http, infra) -> None:
        """The export worker's peak RSS grows by far less than the file it writes.

        Database and api process of the test's own: on the shared database the session server's exporter
        could take the job, and the measured process would have done nothing.
        """
        n = 200_000
        start = T0 + dt.timedelta(days=400)
        async with isolated_database(infra[1], "large_export") as url:
            conn = await asyncpg.connect(url)
            try:
                account = Account(*await accounts.create_account(conn, "large-export"))
                await seed(conn, account, n, start=start)
            finally:
                await conn.close()
            async with api_process(http, kafka=infra[0], database_url=url) as api:
                before = vmhwm_kib(api.pid)
                body = {"startDateTime": start.isoformat(),
                        "endDateTime": (start + dt.timedelta(days=200)).isoformat()}
                async with http.post(f"{api.base}{P}/messages/history/export", json=body,
                                     headers=account.headers) as r:
                    job = await r.json()
                done = await finished(http, api.base, account, job["id"], timeout=240)
                after = vmhwm_kib(api.pid)
        assert done["status"] == "COMPLETED" and done["rowCount"] == n
        growth_mb = (after - before) / 1024
        size_mb = done["size"] / 2**20
        print(f"200k-row export: {size_mb:.1f} MiB CSV, peak RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB")
        assert growth_mb < min(20.0, size_mb / 2), f"peak RSS grew {growth_mb:.1f} MiB for a {size_mb:.1f} MiB file"
