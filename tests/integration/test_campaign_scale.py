"""A campaign of 200,000 recipients confirms without loading them: one send request per contact, bounded memory.

The campaign runs in a ``serve --role api`` subprocess (the api role hosts the campaign runner) against a
database of its own: the session's in-process server also runs a campaign runner, which would otherwise claim
the campaign (the runners share work through the database) and take the work out of the measured process.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, cast

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from qlara_events.campaign_runner import send_request
from qlara_events.config import Settings, Topics
from qlara_events.kafka import delete_topics, ensure_topics
from qlara_events.store import accounts
from qlara_events.store import campaigns as store

from support.isolated import api_process, isolated_database, vmhwm_kib
from support.live import uid, wait_until
from support.settings import new_account

P = "/partner-gateway/v1"
N = 200_000
#: The growth allowed is a third of what holding the recipients and their send requests allocates (measured
#: by the test: 261 MiB for 200,000), so a runner that held them fails by 3x; the growth measured is about
#: 9 MiB whatever the campaign's size (benchmarks/campaign_confirm.py), ten times under the bound. (A fixed
#: 40 MiB bound was only 4.6x over the 8.7 MiB measured.)
HOLD_FRACTION = 3
PHONE_PREFIX = "+44791"


async def load_list(conn: asyncpg.Connection, account_id: str, n: int) -> int:
    """A list of ``n`` contacts inserted in one statement (the API path is tested in test_contacts)."""
    list_id = await conn.fetchval(
        "insert into contact_lists (account_id, name) values ($1, 'scale') returning list_id", account_id)
    await conn.execute(
        "with c as (insert into contacts (account_id, phone_number, first_name, is_valid)"
        " select $1, $2 || lpad(i::text, 7, '0'), 'Name' || i, true from generate_series(1, $3) as i"
        " returning contact_id)"
        " insert into contact_list_members (list_id, contact_id) select $4, contact_id from c",
        account_id, PHONE_PREFIX, n, list_id)
    await conn.execute("analyze contacts; analyze contact_list_members")
    return int(list_id)


async def holding_cost_mib(url: str, account_id: str, list_id: int) -> float:
    """What a runner holding every recipient at once would allocate: the rows, then their send requests."""
    conn = await asyncpg.connect(url)
    try:
        campaign = {"campaign_id": 1, "account_id": account_id, "sending_mode": "SMS", "sms_sender": "Shop",
                    "sms_body": "Hello {{firstName}}"}
        tracemalloc.start()
        try:
            rows = await store.recipients_after(conn, account_id, [list_id], 0, N)
            row = cast(asyncpg.Record, campaign)  # -- a dict stands in for the campaign row: only indexed
            held = [send_request(row, r["phone_number"], {"firstName": r["first_name"]}, "2026-01-01T00:00:00Z")
                    for r in rows]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(held) == N
        return peak / 2**20
    finally:
        await conn.close()


async def read_all(kafka: str, topic: str) -> tuple[int, list[dict[str, Any]]]:
    """The topic's record count (end offsets) and the fields that matter of every record in it."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=4 * 2**20)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        ends = await consumer.end_offsets(parts)
        total = sum(ends.values())
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in recs:
                    v = orjson.loads(r.value)
                    seen.append({k: v[k] for k in ("messageId", "destination", "campaignId")}
                                | {"text": v["sms"]["text"]})
        return total, seen
    finally:
        await consumer.stop()


class TestCampaignScale:
    """Confirming a 200,000-recipient campaign through the HTTP API of a separate api process."""

    @pytest.mark.timeout(240)
    async def test_200k_recipients_one_send_request_each_bounded_memory(
            self, http: aiohttp.ClientSession, infra: tuple[str, str]) -> None:
        """Exactly one send request per contact, the campaign finishes (status 3), and the serving process's
        peak RSS grows by far less than holding the recipients would cost."""
        kafka, test_url = infra
        prefix = uid("tscale") + "."
        async with isolated_database(test_url, "campaign_scale") as url:
            conn = await asyncpg.connect(url)
            try:
                account_id, key = await accounts.create_account(conn, "scale")
                await conn.execute("update accounts set credit = 1e6 where account_id = $1", account_id)
                t = time.monotonic()
                list_id = await load_list(conn, account_id, N)
                load_s = time.monotonic() - t
            finally:
                await conn.close()
            await ensure_topics(Settings(kafka_bootstrap=kafka, topics=Topics(prefix)))
            headers = {"X-API-Key": key}
            # Status 3 needs every message final or the deadline passed; no upstream answers here, so a 1 s
            # deadline lets the campaign finish as soon as its expansion is done.
            env = {"QLARA_KAFKA_TOPIC_PREFIX": prefix, "QLARA_CAMPAIGN_DEADLINE": "1"}
            try:
                async with api_process(http, kafka=kafka, database_url=url, extra_env=env) as api:
                    base = api.base
                    async with http.post(f"{base}{P}/campaigns", headers=headers, json={
                            "name": "scale", "sendingMode": "SMS", "smsSender": "Shop",
                            "smsBody": "Hello {{firstName}}", "destinationType": 1, "contactListIds": [list_id],
                            "readyToSend": True}) as r:
                        assert r.status == 201
                        cid = (await r.json())["id"]
                    async with http.post(f"{base}{P}/campaigns/{cid}/calculateGoal", headers=headers) as r:
                        assert (await r.json())["totalDestinations"] == N
                    before = vmhwm_kib(api.pid)
                    t = time.monotonic()
                    async with http.put(f"{base}{P}/campaigns/{cid}/confirm", headers=headers) as r:
                        assert r.status == 202

                    async def finished() -> dict[str, Any] | None:
                        async with http.get(f"{base}{P}/campaigns/{cid}", headers=headers) as r:
                            c: dict[str, Any] = await r.json()
                        return c if c["status"] in (3, 4) else None

                    done = await wait_until(finished, timeout=150, what="campaign status 3")
                    elapsed = time.monotonic() - t
                    after = vmhwm_kib(api.pid)
                total, records = await read_all(kafka, Topics(prefix).send_requests)
            finally:
                await delete_topics(kafka, prefix)
            hold_mib = await holding_cost_mib(url, account_id, list_id)
        growth_mib = (after - before) / 1024
        print(f"\n200k-recipient campaign: contacts loaded in {load_s:.1f} s; confirm to status {done['status']} in "
              f"{elapsed:.1f} s ({N / elapsed:,.0f} send requests/s); api peak RSS {before / 1024:.1f} -> "
              f"{after / 1024:.1f} MiB (+{growth_mib:.1f}); holding the recipients and their send requests "
              f"would allocate {hold_mib:.0f} MiB")
        assert done["status"] == 3 and done["messagesCreated"] == N == done["totalDestinations"], done
        assert total == N == len(records), f"{total} records in the topic, {len(records)} read, {N} contacts"
        assert len({r["messageId"] for r in records}) == N
        assert {r["destination"] for r in records} == {f"{PHONE_PREFIX}{i:07d}" for i in range(1, N + 1)}
        assert {r["campaignId"] for r in records} == {str(cid)}
        assert all(r["text"] == f"Hello Name{int(r['destination'][-7:])}" for r in records)
        assert growth_mib < hold_mib / HOLD_FRACTION, (
            f"peak RSS grew {growth_mib:.1f} MiB; holding the recipients costs {hold_mib:.0f} MiB")


class TestRecipientBatches:
    """store.recipients_after: the keyset batches the runner streams."""

    async def test_batches_cover_each_contact_once(self, db: asyncpg.Pool) -> None:
        """Overlapping lists give each contact with a phone once, in id order, across batch boundaries; contacts
        without a phone and lists of another account are left out."""
        account, other = (await new_account(db)).id, (await new_account(db)).id
        phones = await db.fetch(
            "insert into contacts (account_id, phone_number, first_name) select $1, '+44792' || lpad(i::text, 7, '0'),"
            " 'P' || i from generate_series(1, 7) as i returning contact_id", account)
        ids = [r["contact_id"] for r in phones]
        email_only = await db.fetchval("insert into contacts (account_id, email) values ($1, 'a@example.com')"
                                       " returning contact_id", account)
        stranger = await db.fetchval("insert into contacts (account_id, phone_number) values ($1, '+447930000001')"
                                     " returning contact_id", other)
        a, b, foreign = [await db.fetchval("insert into contact_lists (account_id, name) values ($1, 'l')"
                                           " returning list_id", owner) for owner in (account, account, other)]
        members = [(a, c) for c in [*ids[:5], email_only]] + [(b, c) for c in ids[3:]] + [(foreign, stranger)]
        await db.executemany("insert into contact_list_members (list_id, contact_id) values ($1, $2)", members)
        got: list[list[int]] = []
        after = 0
        while True:
            rows = await store.recipients_after(db, account, [a, b, foreign], after, 3)
            got.append([r["contact_id"] for r in rows])
            if len(rows) < 3:
                break
            after = rows[-1]["contact_id"]
        assert got == [ids[0:3], ids[3:6], ids[6:7]]
        assert [r["phone_number"] for r in await store.recipients_after(db, other, [foreign], 0, 10)] == [
            "+447930000001"]
