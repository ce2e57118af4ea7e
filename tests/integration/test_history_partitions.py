"""The message history is partitioned by month of submission (migration 010) and reads stay correct."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from qlara_events.store import messages as queries
from qlara_events.store import partitions
from qlara_events.store.migrate import migrate, migrations

from support.live import Account, LiveServer, post_events, status, submitted, uid, wait_until

P = "/partner-gateway/v1"


def month_name(t: dt.datetime) -> str:
    return f"messages_{t:%Y_%m}"


def months_ago(n: int) -> dt.datetime:
    """The middle of the month ``n`` months before this one (UTC)."""
    now = dt.datetime.now(dt.UTC)
    y, m = divmod(now.year * 12 + now.month - 1 - n, 12)
    return dt.datetime(y, m + 1, 15, 12, 0, tzinfo=dt.UTC)


async def by_cid(http: aiohttp.ClientSession, server: LiveServer, account: Account, cid: str) -> dict[str, Any] | None:
    async with http.get(f"{server.url}{P}/messages/status/{cid}", params={"channel": "SMS"},
                        headers=account.headers) as r:
        return await r.json() if r.status == 200 else None  # type: ignore[no-any-return]


async def plan_tables(db: asyncpg.Pool, sql: str, *args: Any) -> set[str]:
    """The partitions of ``messages`` that executing ``sql`` reads (EXPLAIN ANALYZE, so run-time pruning shows)."""
    async with db.acquire() as conn:
        raw = await conn.fetchval(f"explain (analyze, format json) {sql}", *args)
    plan = orjson.loads(raw) if isinstance(raw, str | bytes) else raw  # -- the pool may decode json itself
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        rel = node.get("Relation Name", "")
        if rel.startswith("messages_") and node.get("Actual Loops", 1) > 0:
            found.add(rel)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


class TestLayout:
    """Migrating creates the months around now; the maintenance call is idempotent."""

    async def test_months_ahead_exist_and_ensure_is_idempotent(self, db) -> None:
        """Last month to three months ahead are partitions after migrate, and a second ensure creates none."""
        await partitions.ensure(db)
        names = await partitions.months(db)
        for n in range(-1, partitions.AHEAD_MONTHS + 1):
            assert month_name(months_ago(-n)) in names
        assert names[-1] == "messages_default"
        assert await partitions.ensure(db) == 0

    async def test_a_message_id_exists_once_across_months(self, db, account) -> None:
        """Inserting an existing message id with another month's timestamp inserts nothing (message_keys)."""
        mid = uid("dup-")
        sql = ("insert into messages (message_id, account_id, channel, customer_message_id, provider,"
               " provider_message_id, destination, status, status_rank, submitted_at)"
               " values ($1, $2, 'SMS', 'c', 'twilio', $1, '+393330000000', 'SENT', 1, $3)"
               " on conflict do nothing returning message_id")
        assert await db.fetchval(sql, mid, account.id, months_ago(0)) == mid
        assert await db.fetchval(sql, mid, account.id, months_ago(2)) is None
        assert await db.fetchval("select count(*) from messages where message_id = $1", mid) == 1
        assert await db.fetchval("select submitted_at from message_keys where message_id = $1", mid) == months_ago(0)


class TestLateMonths:
    """A message of a month with no partition is still projected, then moved into its month."""

    async def test_old_message_lands_in_default_then_moves_and_keeps_projecting(self, http, server, db,
                                                                                account) -> None:
        """Submitted 23 months ago: stored in the default partition, updated there, moved by ensure, updated again."""
        old = months_ago(23)  # -- a month no other test writes to, within the 24 months ensure carves out
        part = month_name(old)
        assert part not in await partitions.months(db)
        sub = submitted(account.id) | {"occurredAt": old.isoformat().replace("+00:00", "Z")}
        assert (await post_events(http, server, [sub, status("DELIVERED", message_id=sub["messageId"])])).status == 202

        async def delivered() -> dict[str, Any] | None:
            body = await by_cid(http, server, account, sub["customerMessageId"])
            return body if body and body["deliveryStatus"] == "DELIVERED" else None

        await wait_until(delivered, what="the old message to be DELIVERED")
        where = "select tableoid::regclass::text from messages where message_id = $1"
        assert await db.fetchval(where, sub["messageId"]) == "messages_default"

        assert await partitions.ensure(db) >= 1
        assert await db.fetchval(where, sub["messageId"]) == part
        assert await db.fetchval("select count(*) from messages_default where message_id = $1", sub["messageId"]) == 0

        assert (await post_events(http, server, status("READ", message_id=sub["messageId"]))).status == 202

        async def read() -> dict[str, Any] | None:
            body = await by_cid(http, server, account, sub["customerMessageId"])
            return body if body and body["deliveryStatus"] == "READ" else None

        body = await wait_until(read, what="the moved message to be READ")
        assert body["submittedAt"].startswith(old.strftime("%Y-%m-%d"))
        start = (old - dt.timedelta(days=1)).isoformat()
        end = (old + dt.timedelta(days=1)).isoformat()
        async with http.get(f"{server.url}{P}/messages/history", headers=account.headers,
                            params={"channel": "SMS", "from": start, "to": end}) as r:
            assert r.status == 200
            assert [m["messageId"] for m in await r.json()] == [sub["messageId"]]


class TestPruning:
    """Reads touch only the partitions they need."""

    async def test_history_window_reads_only_its_months(self, db, account) -> None:
        """A one-month history window reads that month's partition, not the others."""
        await partitions.ensure(db)
        this_month, last_month = months_ago(0), months_ago(1)
        for t in (this_month, last_month):
            await db.execute(
                "insert into messages (message_id, account_id, channel, customer_message_id, provider,"
                " provider_message_id, destination, status, status_rank, submitted_at)"
                " values ($1, $2, 'SMS', 'c', 'twilio', $1, '+393330000000', 'SENT', 1, $3)", uid("p-"), account.id, t)
        window = (this_month - dt.timedelta(days=1), this_month + dt.timedelta(days=1))
        assert await plan_tables(db, queries.SQL_HISTORY_ANY_STATUS, account.id, "SMS", *window, 20, 0) == {
            month_name(this_month)}
        assert await plan_tables(db, queries.SQL_HISTORY, account.id, "SMS", *window, "SENT", 20, 0) == {
            month_name(this_month)}

    async def test_lookup_by_id_reads_one_partition(self, db, account) -> None:
        """GET /messages/{id} reads the message's month only, through message_keys."""
        await partitions.ensure(db)
        mid = uid("one-")
        await db.execute(
            "insert into messages (message_id, account_id, channel, customer_message_id, provider,"
            " provider_message_id, destination, status, status_rank, submitted_at)"
            " values ($1, $2, 'SMS', 'c', 'twilio', $1, '+393330000000', 'SENT', 1, $3)", mid, account.id,
            months_ago(1))
        tables = await plan_tables(db, queries.SQL_BY_MESSAGE_ID, account.id, mid, None)
        assert tables == {month_name(months_ago(1))}


class TestUpgrade:
    """Migration 010 moves an existing unpartitioned history into months without losing a row or a link."""

    async def test_existing_rows_refs_and_parts_survive(self, db) -> None:
        """Rows of 9 months, their refs and parts, are all there after 010; deleting a key cascades."""
        schema = uid("upgrade_")
        async with db.acquire() as conn:
            await conn.execute(f"create schema {schema}")
            try:
                await conn.execute(f"set search_path to {schema}, public")  # -- public: pg_trgm lives there
                async with conn.transaction():
                    for _, _, sql in [m for m in migrations() if m[0] < 10]:
                        await conn.execute(sql)
                    await conn.execute(
                        "create table schema_migrations (version int primary key, name text not null,"
                        " applied_at timestamptz not null default now())")
                    await conn.executemany("insert into schema_migrations (version, name) values ($1, $2)",
                                           [(v, n) for v, n, _ in migrations() if v < 10])
                    await conn.execute(
                        "insert into messages (message_id, account_id, channel, customer_message_id, provider,"
                        " provider_message_id, destination, status, status_rank, parts, submitted_at)"
                        " select 'm' || i, 'a', 'SMS', 'c' || i, 'twilio', 'p' || i, '+39', 'SENT', 1, 2,"
                        " now() - make_interval(days => i * 30) from generate_series(0, 8) i")
                    await conn.execute("insert into message_refs select 'twilio', 'p' || i, 'm' || i, 1"
                                       " from generate_series(0, 8) i")
                    await conn.execute("insert into message_parts (message_id, part, status, status_rank)"
                                       " select 'm' || i, 1, 'SENT', 1 from generate_series(0, 8) i")
                assert await migrate(conn) == [n for v, n, _ in migrations() if v >= 10]
                assert await conn.fetchval("select count(*) from messages") == 9
                assert await conn.fetchval("select count(*) from message_keys") == 9
                assert await conn.fetchval(  # -- one partition per month of data, each row in its month's
                    "select count(distinct tableoid) = count(distinct date_trunc('month', submitted_at at time zone"
                    " 'UTC')) and bool_and(tableoid::regclass::text = 'messages_' ||"
                    " to_char(submitted_at at time zone 'UTC', 'YYYY_MM')) from messages")
                assert await conn.fetchval("select count(*) from messages_default") == 0
                await conn.execute("delete from message_keys where message_id = 'm3'")
                assert await conn.fetchval("select count(*) from message_refs") == 8
                assert await conn.fetchval("select count(*) from message_parts") == 8
            finally:
                await conn.execute("reset search_path")
                await conn.execute(f"drop schema {schema} cascade")


class TestRetention:
    """`qlara-events history drop-month`: a whole month goes at once, with everything hanging off it."""

    @staticmethod
    async def old_messages(db: asyncpg.Pool, account: Account, when: dt.datetime, n: int) -> list[str]:
        ids = [uid("ret-") for _ in range(n)]
        for mid in ids:
            await db.execute(
                "insert into messages (message_id, account_id, channel, customer_message_id, provider,"
                " provider_message_id, destination, status, status_rank, parts, submitted_at)"
                " values ($1, $2, 'SMS', $1, 'twilio', $1, '+393330000000', 'SENT', 1, 2, $3)", mid, account.id, when)
            await db.execute("insert into message_refs values ('twilio', $1, $1, 1)", mid)
            await db.execute("insert into message_parts (message_id, part, status, status_rank)"
                             " values ($1, 1, 'SENT', 1)", mid)
            await db.execute(
                "insert into message_events (event_id, type, message_id, effect, via, occurred_at, received_at,"
                " payload) values ($1, 'message.submitted', $2, 'submitted', 'test', $3, $3, '{}')",
                uid("ev-"), mid, when)
        await partitions.ensure(db)
        return ids

    async def test_drop_month_takes_its_rows_and_leaves_the_others(self, db, account) -> None:
        """Dropping a month deletes its partition, keys, refs, parts and events; the next month is untouched."""
        dropped, kept = months_ago(20), months_ago(19)
        gone = await self.old_messages(db, account, dropped, 3)
        stays = await self.old_messages(db, account, kept, 2)
        async with db.acquire() as conn:
            counts = await partitions.drop_month(conn, f"{dropped:%Y-%m}")
        assert counts == {"messages": 3, "keys": 3, "events": 3}
        assert month_name(dropped) not in await partitions.months(db)
        assert month_name(kept) in await partitions.months(db)
        for table in ("messages", "message_keys", "message_refs", "message_parts", "message_events"):
            assert await db.fetchval(f"select count(*) from {table} where message_id = any($1)", gone) == 0, table
            assert await db.fetchval(f"select count(*) from {table} where message_id = any($1)", stays) == 2, table

    async def test_refusals(self, db, settings) -> None:
        """Last month, this month, a malformed month and a month without partition are refused, by the CLI too."""
        async with db.acquire() as conn:
            for month, reason in ((f"{months_ago(1):%Y-%m}", "too recent"), (f"{months_ago(0):%Y-%m}", "too recent"),
                                  ("2025-13", "must look like"), ("last year", "must look like"),
                                  ("1999-01", "no partition")):
                with pytest.raises(partitions.CannotDrop, match=reason):
                    await partitions.drop_month(conn, month)
        env = {**os.environ, "QLARA_DATABASE_URL": settings.database_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qlara_events.cli", "history", "drop-month", "1999-01", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1 and b"no partition messages_1999_01" in err and out == b""
