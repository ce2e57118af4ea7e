"""Campaigns end to end: contacts and a list, create, price, confirm, the sandbox delivers, stats add up."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from qlara_events.config import Settings
from qlara_events.sandbox import Behaviour, Sandbox

from support.live import Account, LiveServer, wait_until

P = "/partner-gateway/v1"
C = f"{P}/campaigns"


@pytest_asyncio.fixture(scope="module")
async def sandbox(server: LiveServer) -> AsyncIterator[Sandbox]:
    """The simulated upstream senders and providers, posting to the test server's ingress."""
    box = Sandbox(server.settings, server.url, Behaviour(delivery_rate=0.75, read_rate=0.0, delay_s=0.05, seed=7))
    task = asyncio.create_task(box.run())
    yield box
    box.stop()
    await asyncio.wait_for(task, 60)


async def contacts_list_via_api(http: aiohttp.ClientSession, server: LiveServer, account: Account, n: int) -> int:
    """Contacts and a list created through the Platform API, as a partner would."""
    ids = []
    for i in range(1, n + 1):
        status, contact = await call(http, server, "POST", f"{P}/contacts", account,
                                     {"phoneNumber": f"+39333{2000000 + i:07d}", "firstName": f"Name{i}"})
        assert status == 201, contact
        ids.append(contact["id"])
    status, lst = await call(http, server, "POST", f"{P}/contacts/list", account, {"name": "Milano"})
    assert status == 201, lst
    status, added = await call(http, server, "POST", f"{P}/contacts/list/contacts", account,
                               {"listIds": [lst["id"]], "contactIds": ids})
    assert status == 201 and added["created"] == n
    return int(lst["id"])


async def contacts_list(db: asyncpg.Pool, account: Account, n: int) -> int:
    list_id = await db.fetchval("insert into contact_lists (account_id, name) values ($1, 'Milano') returning list_id",
                                account.id)
    await db.execute(
        "with c as (insert into contacts (account_id, phone_number, first_name, is_valid)"
        " select $1, '+39333' || lpad((1000000 + i)::text, 7, '0'), 'Name' || i, true"
        " from generate_series(1, $2) as i returning contact_id)"
        " insert into contact_list_members (list_id, contact_id) select $3, contact_id from c", account.id, n, list_id)
    return int(list_id)


async def call(http: aiohttp.ClientSession, server: LiveServer, method: str, path: str, account: Account,
               body: Any = None) -> tuple[int, Any]:
    async with http.request(method, f"{server.url}{path}", json=body, headers=account.headers) as r:
        return r.status, (await r.json() if r.status != 204 else None)


async def export_rows(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                      export_id: int) -> list[dict[str, str]]:
    """The rows of an export job's CSV, once the job has completed (polled with a bounded deadline)."""
    # The polling shares the account's rate limit (50/s bursts) with the test's own requests: a 429 is
    # waited out (it is not what this helper checks); any other answer but 200 fails.
    async def exported() -> dict[str, Any] | None:
        status, jobs = await call(http, server, "GET", f"{P}/exports", account)
        if status == 429:
            return None
        assert status == 200, jobs
        j = {x["id"]: x for x in jobs}[export_id]
        return j if j["status"] == "COMPLETED" else None

    async def download_link() -> dict[str, Any] | None:
        status, link = await call(http, server, "GET", f"{P}/exports/{export_id}", account)
        if status == 429:
            return None
        assert status == 200, link
        return dict(link)

    await wait_until(exported, what=f"export {export_id}")
    link = await wait_until(download_link, what=f"export {export_id}'s link")
    async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
        assert r.status == 200
        return list(csv.DictReader(io.StringIO(await r.text())))


class TopicWindow:
    """The records a topic receives from the moment this is entered (older records are never replayed).

    Each record is kept as (produce timestamp in ms, JSON value); :meth:`read_to_end` reads up to the end
    offsets of the moment it is called, so what it returns is everything produced until then.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                          enable_auto_commit=False)
        self._topic = topic
        self._partitions: list[TopicPartition] = []
        self.records: list[tuple[int, dict[str, Any]]] = []

    async def __aenter__(self) -> TopicWindow:
        await self._consumer.start()
        try:
            async def assigned() -> set[TopicPartition]:
                return set(self._consumer.assignment())

            # Without a group every partition is assigned once the topic's metadata is in; the start positions
            # are then pinned to the end offsets of this moment (a lazy "latest" reset would happen at the
            # first fetch and could skip what was produced meanwhile).
            self._partitions = sorted(await wait_until(assigned, what=f"partitions of {self._topic}"))
            for tp, offset in (await self._consumer.end_offsets(self._partitions)).items():
                self._consumer.seek(tp, offset)
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        """Take what has arrived so far (at most one short fetch)."""
        for recs in (await self._consumer.getmany(timeout_ms=100)).values():
            self.records.extend((r.timestamp, orjson.loads(r.value)) for r in recs)

    async def read_to_end(self) -> list[tuple[int, dict[str, Any]]]:
        """Every record produced since entering, up to the end offsets as of this call."""
        end = await self._consumer.end_offsets(self._partitions)

        async def caught_up() -> bool:
            await self.poll()
            return all([await self._consumer.position(tp) >= end[tp] for tp in self._partitions])

        await wait_until(caught_up, what="the topic's end offsets")
        return list(self.records)

    async def matching(self, match: Callable[[dict[str, Any]], bool], count: int,
                       timeout: float) -> list[tuple[int, dict[str, Any]]]:
        """Await ``count`` records whose value matches."""
        async def found() -> list[tuple[int, dict[str, Any]]] | None:
            await self.poll()
            got = [r for r in self.records if match(r[1])]
            return got if len(got) >= count else None

        return await wait_until(found, timeout=timeout, what=f"{count} matching records on {self._topic}")


def schedule_text(t: dt.datetime) -> str:
    """``t`` in Qlara's ``yyyy-MM-dd HH:mm:ss.SSSZ``, written in t's own offset."""
    offset = t.strftime("%z")
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}{offset}"


def draft(list_id: int, **over: Any) -> dict[str, Any]:
    return {"name": "Saldi primavera", "sendingMode": "SMS", "smsSender": "NegozioXY",
            "smsBody": "Ciao {{firstName}}, -20% fino a domenica!", "destinationType": 1,
            "contactListIds": [list_id], "readyToSend": False, **over}


class TestCampaignFlow:
    """The whole loop: confirm → send requests → sandbox → receipts → counters → status 3 → stats and exports."""

    async def test_end_to_end(self, http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool, account: Account,
                              sandbox: Sandbox) -> None:
        """Stats equal the statuses of the campaign's messages; its history export holds exactly them."""
        list_id = await contacts_list_via_api(http, server, account, 40)
        await db.execute("update accounts set credit = 100 where account_id = $1", account.id)
        status, camp = await call(http, server, "POST", C, account, draft(list_id))
        assert status == 201 and camp["status"] == 0
        status, goal = await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        assert status == 200 and goal["totalDestinations"] == 40 and goal["upToDate"]
        status, price = await call(http, server, "GET", f"{C}/{camp['id']}/price", account)
        assert price["price"] == pytest.approx(40 * 0.045)
        status, body = await call(http, server, "PUT", f"{C}/{camp['id']}/confirm", account)
        assert status == 400 and "readyToSend" in body["message"]
        await call(http, server, "PUT", f"{C}/{camp['id']}", account, {"readyToSend": True})
        status, confirmed = await call(http, server, "PUT", f"{C}/{camp['id']}/confirm", account)
        assert status == 202 and confirmed["status"] in (1, 2)

        async def completed() -> dict[str, Any] | None:
            _, c = await call(http, server, "GET", f"{C}/{camp['id']}", account)
            return c if c["status"] == 3 else None

        done = await wait_until(completed, timeout=90, what="campaign status 3")
        assert done["totalDestinations"] == 40 and done["messagesCreated"] == 40
        rows = await db.fetch("select status, count(*) as n from messages where campaign_id = $1 group by status",
                              str(camp["id"]))
        actual = {r["status"]: r["n"] for r in rows}
        assert sum(actual.values()) == 40 and set(actual) <= {"DELIVERED", "ERROR"}
        _, stats = await call(http, server, "GET", f"{C}/{camp['id']}/stats", account)
        assert stats["sent"] == 40 and stats["delivered"] == actual.get("DELIVERED", 0)
        assert stats["failed"] == actual.get("ERROR", 0) and stats["pending"] == 0
        assert done["totalSuccess"] == stats["delivered"] and done["totalFailed"] == stats["failed"]
        texts = await db.fetch("select m.destination from messages m where m.campaign_id = $1", str(camp["id"]))
        assert len(texts) == 40
        day = dt.datetime.now(dt.UTC).date().isoformat()
        _, period = await call(http, server, "GET", f"{C}/stats?startDate={day}&endDate={day}&aggregateOn=day", account)
        assert sum(p["total"] for p in period) == 40 and sum(p["delivered"] for p in period) == stats["delivered"]
        assert float(await db.fetchval("select credit from accounts where account_id = $1",
                                       account.id)) == pytest.approx(100 - 40 * 0.045)

        # The history export of the same period, for this campaign, holds exactly its messages.
        now = dt.datetime.now(dt.UTC)
        status, job = await call(http, server, "POST", f"{P}/messages/history/export", account, {
            "startDateTime": (now - dt.timedelta(hours=1)).isoformat(),
            "endDateTime": (now + dt.timedelta(hours=1)).isoformat(), "campaignId": camp["id"]})
        assert status == 202

        exported_rows = await export_rows(http, server, account, job["id"])
        ids = {r["message_id"] for r in await db.fetch("select message_id from messages where campaign_id = $1",
                                                       str(camp["id"]))}
        assert {row["messageId"] for row in exported_rows} == ids and len(exported_rows) == 40
        assert {row["deliveryStatus"] for row in exported_rows} <= {"DELIVERED", "ERROR"}

    async def test_placeholders_reach_send_requests(self, http: aiohttp.ClientSession, server: LiveServer,
                                                    db: asyncpg.Pool, account: Account) -> None:
        """Each send request carries the body rendered for its contact."""
        from support.live import read_topic

        list_id = await contacts_list(db, account, 2)
        await db.execute("update accounts set credit = 10 where account_id = $1", account.id)
        _, camp = await call(http, server, "POST", C, account, draft(list_id, readyToSend=True))
        await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        status, _ = await call(http, server, "PUT", f"{C}/{camp['id']}/confirm", account)
        assert status == 202
        got = await read_topic(server.settings, server.settings.topics.send_requests,
                               lambda v: v.get("campaignId") == str(camp["id"]), count=2)
        assert sorted(g["sms"]["text"] for g in got) == ["Ciao Name1, -20% fino a domenica!",
                                                        "Ciao Name2, -20% fino a domenica!"]

    async def test_send_sets_last_contact_and_campaign_type(self, http: aiohttp.ClientSession, server: LiveServer,
                                                           db: asyncpg.Pool, account: Account) -> None:
        """A list campaign sets lastContactType (its first channel) and lastCampaignType (its sendingMode) on
        the contacts it sent to; the list filters and the contacts export see them; a contact it did not send
        to stays null."""
        list_id = await contacts_list(db, account, 2)
        sent = [r["contact_id"] for r in await db.fetch(
            "select contact_id from contact_list_members where list_id = $1 order by contact_id", list_id)]
        outsider = await db.fetchval("insert into contacts (account_id, phone_number, is_valid)"
                                     " values ($1, '+393339999999', true) returning contact_id", account.id)
        mixed = await db.fetchval("insert into contact_lists (account_id, name) values ($1, 'Mixed')"
                                  " returning list_id", account.id)
        await db.execute("insert into contact_list_members (list_id, contact_id) values ($1, $2), ($1, $3)",
                         mixed, sent[0], outsider)
        await db.execute("update accounts set credit = 10 where account_id = $1", account.id)
        _, camp = await call(http, server, "POST", C, account, draft(list_id, readyToSend=True))
        await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        status, _ = await call(http, server, "PUT", f"{C}/{camp['id']}/confirm", account)
        assert status == 202

        async def marked() -> list[Any] | None:
            _, got = await call(http, server, "GET", f"{P}/contacts/list/{mixed}/contacts?lastContactType=SMS",
                                account)
            return got or None

        got = await wait_until(marked, timeout=60, what="contacts marked by the campaign send")
        assert [c["id"] for c in got] == [sent[0]]
        assert got[0]["lastContactType"] == "SMS" and got[0]["lastCampaignType"] == "SMS"
        _, by_campaign = await call(http, server, "GET",
                                    f"{P}/contacts/list/{list_id}/contacts?lastCampaignType=SMS", account)
        assert sorted(c["id"] for c in by_campaign) == sent
        _, none = await call(http, server, "GET", f"{P}/contacts/list/{list_id}/contacts?lastContactType=RCS",
                             account)
        assert none == []
        _, other = await call(http, server, "GET", f"{P}/contacts/{outsider}", account)
        assert other["lastContactType"] is None and other["lastCampaignType"] is None

        status, job = await call(http, server, "POST", f"{P}/exports/contacts", account, {"listIds": [mixed]})
        assert status == 202

        rows = {int(row["id"]): row for row in await export_rows(http, server, account, job["id"])}
        assert (rows[sent[0]]["lastContactType"], rows[sent[0]]["lastCampaignType"]) == ("SMS", "SMS")
        assert (rows[outsider]["lastContactType"], rows[outsider]["lastCampaignType"]) == ("", "")


class TestCampaignRules:
    """Validation, states and credit."""

    async def test_validation_and_states(self, http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool,
                                         account: Account, other_account: Account) -> None:
        """Bad modes and missing channel fields are 400; confirm needs a fresh goal and credit; started
        campaigns can be neither edited nor deleted; other accounts see 404."""
        list_id = await contacts_list(db, account, 3)
        assert (await call(http, server, "POST", C, account, draft(list_id, sendingMode="FAX")))[0] == 400
        assert (await call(http, server, "POST", C, account, {"sendingMode": "SMS"}))[0] == 400
        status, body = await call(http, server, "POST", C, account, draft(list_id, sendingMode="WHATSAPP_SMS",
                                                                  readyToSend=True))
        assert status == 400 and "whatsappPhoneNumberId" in body["message"]
        assert (await call(http, server, "POST", C, account, draft(list_id, scheduledDate="tomorrow")))[0] == 400
        assert (await call(http, server, "POST", C, account, draft(list_id, destinationType=2,
                                                           destinations=["+39 not a number"])))[0] == 400
        _, camp = await call(http, server, "POST", C, account, draft(list_id, readyToSend=True))
        cid = camp["id"]
        assert (await call(http, server, "GET", f"{C}/{cid}/price", account))[0] == 400
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 400  # no goal yet
        await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        await call(http, server, "PUT", f"{C}/{cid}", account, {"smsBody": "changed " * 30})
        status, body = await call(http, server, "PUT", f"{C}/{cid}/confirm", account)
        assert status == 400 and "calculateGoal" in body["message"]  # the edit invalidated the price
        await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        status, body = await call(http, server, "PUT", f"{C}/{cid}/confirm", account)
        assert status == 400 and "insufficient credit" in body["message"]
        await db.execute("update accounts set credit = 50 where account_id = $1", account.id)
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 202
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 400  # once only

        async def sending() -> bool:
            return bool((await call(http, server, "GET", f"{C}/{cid}", account))[1]["status"] >= 2)

        await wait_until(sending, what="campaign started")
        assert (await call(http, server, "PUT", f"{C}/{cid}", account, {"name": "x"}))[0] == 400
        assert (await call(http, server, "DELETE", f"{C}/{cid}", account))[0] == 404
        for method, path in (("GET", f"{C}/{cid}"), ("DELETE", f"{C}/{cid}"), ("GET", f"{C}/{cid}/stats"),
                             ("POST", f"{C}/{cid}/calculateGoal")):
            assert (await call(http, server, method, path, other_account))[0] == 404, path

    async def test_other_account_cannot_edit_price_or_confirm(self, http: aiohttp.ClientSession,
                                                            server: LiveServer, db: asyncpg.Pool, account: Account,
                                                            other_account: Account) -> None:
        """PUT, price and confirm of another account's campaign are 404 and change nothing: neither the
        campaign nor either account's credit; its owner can still price and confirm it."""
        list_id = await contacts_list(db, account, 3)
        await db.execute("update accounts set credit = 50 where account_id = any($1::text[])",
                         [account.id, other_account.id])
        _, camp = await call(http, server, "POST", C, account, draft(list_id, readyToSend=True))
        cid = camp["id"]
        assert (await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account))[0] == 200
        _, before = await call(http, server, "GET", f"{C}/{cid}", account)
        for method, path, body in (("PUT", f"{C}/{cid}", {"name": "taken over", "smsBody": "x"}),
                                   ("GET", f"{C}/{cid}/price", None), ("PUT", f"{C}/{cid}/confirm", None)):
            status, error = await call(http, server, method, path, other_account, body)
            assert status == 404 and error["status"] == 404, (method, path, status, error)
        assert (await call(http, server, "GET", f"{C}/{cid}", account))[1] == before
        credits = await db.fetch("select account_id, credit from accounts where account_id = any($1::text[])",
                                 [account.id, other_account.id])
        assert {r["account_id"]: r["credit"] for r in credits} == {account.id: 50, other_account.id: 50}
        assert (await call(http, server, "GET", f"{C}/{cid}/price", account))[0] == 200
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 202

    async def test_draft_lifecycle_and_list(self, http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool,
                                            account: Account) -> None:
        """A draft can be edited, listed and deleted (204); unknown lists are refused at calculateGoal."""
        _, camp = await call(http, server, "POST", C, account, draft(999_999_999))
        status, body = await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        assert status == 400 and "999999999" in body["message"]
        status, updated = await call(http, server, "PUT", f"{C}/{camp['id']}", account,
                                     {"name": "Renamed", "scheduledDate": "2030-05-04 08:30:00.000+0200"})
        assert status == 200 and updated["name"] == "Renamed"
        assert updated["scheduledDate"] == "2030-05-04 06:30:00.000+0000"
        _, listed = await call(http, server, "GET", f"{C}?status=0", account)
        assert camp["id"] in [c["id"] for c in listed]
        assert (await call(http, server, "DELETE", f"{C}/{camp['id']}", account))[0] == 204
        assert (await call(http, server, "GET", f"{C}/{camp['id']}", account))[0] == 404

    @pytest.mark.parametrize("query", ["", "startDate=2026-01-01", "startDate=2026-01-01&endDate=x",
                                       "startDate=2026-01-01&endDate=2026-01-02&aggregateOn=year",
                                       "startDate=2026-01-01&endDate=2026-01-02&direction=UP"])
    async def test_stats_errors(self, http: aiohttp.ClientSession, server: LiveServer, account: Account,
                               query: str) -> None:
        """Missing or invalid stats parameters are 400."""
        assert (await call(http, server, "GET", f"{C}/stats?{query}", account))[0] == 400

    async def test_destinations_campaign(self, http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool,
                                         account: Account) -> None:
        """destinationType 2 counts its (deduplicated, normalised) numbers."""
        _, camp = await call(http, server, "POST", C, account, {
            "name": "raw", "sendingMode": "SMS", "smsSender": "X", "smsBody": "hi", "destinationType": 2,
            "destinations": ["+393331234567", "+393331234567", "+393337654321"]})
        _, goal = await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        assert goal["totalDestinations"] == 2


class TestCredit:
    """What confirmation reserves is returned when the campaign does not go ahead and settled when it ends."""

    @staticmethod
    async def credit(db: asyncpg.Pool, account: Account) -> Decimal:
        return Decimal(await db.fetchval("select credit from accounts where account_id = $1", account.id))

    async def test_delete_and_repricing_edits_return_the_reservation(self, http: aiohttp.ClientSession,
                                                                     server: LiveServer, db: asyncpg.Pool,
                                                                     account: Account) -> None:
        """A scheduled campaign: renaming keeps the confirmation, calculateGoal is refused, editing the body goes
        back to draft with the credit returned, and deleting after a second confirmation returns it again."""
        list_id = await contacts_list(db, account, 4)
        await db.execute("update accounts set credit = 50 where account_id = $1", account.id)
        _, camp = await call(http, server, "POST", C, account,
                             draft(list_id, readyToSend=True, scheduledDate="2030-01-01 09:00:00.000+0000"))
        cid = camp["id"]
        _, goal = await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 202
        assert await self.credit(db, account) == Decimal("50") - Decimal(str(goal["price"]))

        status, renamed = await call(http, server, "PUT", f"{C}/{cid}", account, {"name": "Renamed"})
        assert status == 200 and renamed["status"] == 1 and renamed["confirmedAt"] is not None
        assert await self.credit(db, account) == Decimal("50") - Decimal(str(goal["price"]))
        status, body = await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        assert status == 400 and "confirmed" in body["message"]

        status, edited = await call(http, server, "PUT", f"{C}/{cid}", account, {"smsBody": "New text " * 20})
        assert status == 200 and edited["status"] == 0 and edited["confirmedAt"] is None
        assert await self.credit(db, account) == Decimal("50")

        _, goal2 = await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        assert goal2["price"] > goal["price"]  # -- the longer body is more SMS parts
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 202
        assert await self.credit(db, account) == Decimal("50") - Decimal(str(goal2["price"]))
        assert (await call(http, server, "DELETE", f"{C}/{cid}", account))[0] == 204
        assert await self.credit(db, account) == Decimal("50")

    async def test_refused_edit_changes_nothing(self, http: aiohttp.ClientSession, server: LiveServer,
                                                db: asyncpg.Pool, account: Account) -> None:
        """A PUT answered 400 (readyToSend with a channel field missing) leaves the campaign as it was."""
        list_id = await contacts_list(db, account, 1)
        _, camp = await call(http, server, "POST", C, account, draft(list_id))
        status, _ = await call(http, server, "PUT", f"{C}/{camp['id']}", account,
                               {"name": "Half-done", "smsSender": None, "readyToSend": True})
        assert status == 400
        _, now = await call(http, server, "GET", f"{C}/{camp['id']}", account)
        assert now["name"] == camp["name"] and now["readyToSend"] is False

    async def test_settled_for_what_was_sent(self, http: aiohttp.ClientSession, server: LiveServer,
                                             db: asyncpg.Pool, account: Account, sandbox: Sandbox) -> None:
        """Members added to the list after calculateGoal make confirm a 400 until calculateGoal counts them; at
        status 3 the account has paid exactly messagesCreated x unitPrice."""
        list_id = await contacts_list(db, account, 3)
        await db.execute("update accounts set credit = 50 where account_id = $1", account.id)
        _, camp = await call(http, server, "POST", C, account, draft(list_id, readyToSend=True, smsBody="Hi"))
        cid = camp["id"]
        _, goal = await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        assert goal["totalDestinations"] == 3
        await db.execute(
            "with c as (insert into contacts (account_id, phone_number, first_name, is_valid)"
            " select $1, '+39334' || lpad(i::text, 7, '0'), 'Late' || i, true from generate_series(1, 2) as i"
            " returning contact_id) insert into contact_list_members (list_id, contact_id)"
            " select $2, contact_id from c", account.id, list_id)
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 400
        _, goal = await call(http, server, "POST", f"{C}/{cid}/calculateGoal", account)
        assert goal["totalDestinations"] == 5
        assert (await call(http, server, "PUT", f"{C}/{cid}/confirm", account))[0] == 202

        async def ended() -> dict[str, Any] | None:
            body = (await call(http, server, "GET", f"{C}/{cid}", account))[1]
            return body if body["status"] in (3, 4) else None

        done = await wait_until(ended, timeout=60, what="campaign status 3")
        assert done["status"] == 3 and done["messagesCreated"] == 5
        assert await self.credit(db, account) == Decimal("50") - 5 * Decimal(str(goal["unitPrice"]))


class TestScheduledCampaign:
    """Confirming a campaign with a future scheduledDate: nothing is sent before that time, all of it after."""

    #: How far ahead the campaign is scheduled: room for the checks that must run before it.
    AHEAD_S = 8.0

    async def _confirm(self, http: aiohttp.ClientSession, server: LiveServer, account: Account, list_id: int,
                       scheduled: str) -> dict[str, Any]:
        status, camp = await call(http, server, "POST", C, account,
                                  draft(list_id, readyToSend=True, scheduledDate=scheduled))
        assert status == 201, camp
        status, goal = await call(http, server, "POST", f"{C}/{camp['id']}/calculateGoal", account)
        assert status == 200, goal
        status, confirmed = await call(http, server, "PUT", f"{C}/{camp['id']}/confirm", account)
        assert status == 202, confirmed
        return dict(confirmed)

    async def test_future_schedule_waits_then_sends(self, http: aiohttp.ClientSession, server: LiveServer,
                                                    db: asyncpg.Pool, account: Account) -> None:
        """Before scheduledDate the campaign stays READY with no send request (while a campaign scheduled in the
        past is sent at once); after it, every send request is produced at or after scheduledDate."""
        list_id = await contacts_list(db, account, 3)
        await db.execute("update accounts set credit = 10 where account_id = $1", account.id)
        topic = server.settings.topics.send_requests
        rome = dt.timezone(dt.timedelta(hours=2))
        async with TopicWindow(server.settings, topic) as window:
            # Millisecond precision, as the format carries; written at +02:00 to exercise the offset.
            now = dt.datetime.now(dt.UTC)
            at = (now + dt.timedelta(seconds=self.AHEAD_S)).replace(
                microsecond=now.microsecond // 1000 * 1000).astimezone(rome)
            scheduled = await self._confirm(http, server, account, list_id, schedule_text(at))
            assert (scheduled["status"], scheduled["statusName"]) == (1, "READY")
            assert scheduled["scheduledDate"] == schedule_text(at.astimezone(dt.UTC))
            # A campaign whose scheduledDate has passed is sent at once (Qlara: "otherwise immediate"); that the
            # runner sends it shows the runner is polling while it leaves the future one alone.
            past = at.astimezone(dt.timezone(dt.timedelta(hours=-5))) - dt.timedelta(days=1)
            immediate = await self._confirm(http, server, account, list_id, schedule_text(past))
            await window.matching(lambda v: v.get("campaignId") == str(immediate["id"]), 3, timeout=self.AHEAD_S)

            # (a) Strictly before scheduledDate: no send request of the scheduled campaign, still READY.
            produced = await window.read_to_end()
            status, waiting = await call(http, server, "GET", f"{C}/{scheduled['id']}", account)
            checked_at = dt.datetime.now(dt.UTC)
            assert checked_at < at, f"the checks ran after scheduledDate ({checked_at} >= {at}): too slow a machine"
            assert [v for _, v in produced if v.get("campaignId") == str(scheduled["id"])] == []
            assert status == 200 and (waiting["status"], waiting["statusName"]) == (1, "READY")
            assert waiting["messagesCreated"] == 0 and waiting["startedAt"] is None

            # (b) Once the time passes the runner sends it: every send request produced at or after scheduledDate.
            sent = await window.matching(lambda v: v.get("campaignId") == str(scheduled["id"]), 3,
                                         timeout=self.AHEAD_S + 30)
        at_ms = int(at.timestamp() * 1000)
        assert min(ts for ts, _ in sent) >= at_ms
        assert min(dt.datetime.fromisoformat(v["requestedAt"]) for _, v in sent) >= at
        assert sorted(v["destination"] for _, v in sent) == [f"+39333{1000000 + i:07d}" for i in (1, 2, 3)]

        async def started() -> dict[str, Any] | None:
            _, c = await call(http, server, "GET", f"{C}/{scheduled['id']}", account)
            return c if c["status"] in (2, 3) and c["messagesCreated"] == 3 else None

        running = await wait_until(started, what="the scheduled campaign sending")
        assert dt.datetime.fromisoformat(running["startedAt"]) >= at
