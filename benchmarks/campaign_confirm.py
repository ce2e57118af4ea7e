"""``campaign_confirm``: a campaign on a list of 1,000,000 contacts (100,000 quick) confirmed through the HTTP
API; the peak RSS growth of the api process that runs the campaign runner, against the same scenario with
10,000 recipients, and the send requests/s it produces, against aiokafka producing the same number of
send-request-sized records straight to a topic.

The contacts are loaded with one ``insert … select generate_series`` (setup, not measured). Each size runs in
an api process of its own (``serve --role api``, which hosts the runner) writing to a topic prefix of its own,
so the topic's end offsets count that campaign's send requests and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks import baselines, profiling
from benchmarks.common import (
    BIN,
    KAFKA,
    PORTS,
    Context,
    CpuMeter,
    Service,
    progress,
    reset_database,
    service,
    shared_infra,
    vmhwm_kib,
)
from qlara_events.campaign_runner import BATCH, send_request
from qlara_events.config import Settings, Topics
from qlara_events.kafka import ensure_topics
from qlara_events.store import accounts

SCENARIO: Final = "campaign_confirm"
TARGET: Final = "1,000,000 recipients confirm with flat memory (RSS growth <= 1.5 x growth at 10,000 + 16 MiB)"
#: The api process of this scenario.
PORT: Final = PORTS["api"]
API: Final = f"http://127.0.0.1:{PORT}/partner-gateway/v1"
SMALL: Final = 10_000
BODY: Final = "Hello {{firstName}}, your order ships today. Reply STOP to opt out."
#: The memory bound: growth at N may exceed the growth at 10,000 by half, plus 16 MiB of allocator and
#: Kafka-buffer noise; holding the recipients would cost hundreds of MiB at 1,000,000 (about 1 KiB each as
#: rows plus send-request dicts), so the bound separates streaming from loading by an order of magnitude.
SLACK_MIB: Final = 16.0


def sizes(quick: bool) -> tuple[int, float]:
    """Recipients of the large campaign and the longest its expansion may take."""
    return (100_000, 120.0) if quick else (1_000_000, 600.0)


async def load_list(conn: asyncpg.Connection, account_id: str, n: int, prefix: str) -> int:
    """A list of ``n`` new contacts (``prefix`` + 7 digits), in one statement; return its id."""
    list_id = await conn.fetchval(
        "insert into contact_lists (account_id, name) values ($1, $2) returning list_id", account_id, f"bench {n}")
    await conn.execute(
        "with c as (insert into contacts (account_id, phone_number, first_name, is_valid)"
        " select $1, $2 || lpad(i::text, 7, '0'), 'Name' || i, true from generate_series(1, $3) as i"
        " returning contact_id)"
        " insert into contact_list_members (list_id, contact_id) select $4, contact_id from c",
        account_id, prefix, n, list_id)
    return int(list_id)


def sample_record(i: int) -> tuple[bytes, bytes]:
    """A send request exactly as the runner builds it (key, JSON value), for the producer baseline."""
    campaign = {"campaign_id": 1, "account_id": "00000000-0000-4000-8000-000000000000", "sending_mode": "SMS",
                "sms_sender": "BenchShop", "sms_body": BODY}
    phone = f"+4479{i:08d}"
    contact: dict[str, Any] = {"firstName": f"Name{i}", "lastName": None, "fullName": f"Name{i}", "phoneNumber": phone,
               "email": None, "customFields": {}}
    req = send_request(cast(asyncpg.Record, campaign), phone, contact, "2026-01-01T00:00:00.000000Z")
    return req["messageId"].encode(), orjson.dumps(req)


@contextlib.asynccontextmanager
async def api_process(ctx: Context, prefix: str) -> AsyncIterator[Service]:
    """``serve --role api`` (HTTP API and campaign runner) writing to the topics of ``prefix``."""
    await ensure_topics(Settings(kafka_bootstrap=KAFKA, topics=Topics(prefix)))
    env = ctx.env(SCENARIO, QLARA_KAFKA_TOPIC_PREFIX=prefix, QLARA_HTTP_PORT=str(PORT),
                  QLARA_PUBLIC_BASE_URL=f"http://127.0.0.1:{PORT}", QLARA_STORAGE_DIR=str(ctx.workdir / "storage"),
                  QLARA_URL_SIGNING_KEY="bench-url-signing-key")
    argv = [str(BIN / "qlara-events"), "serve", "--role", "api"]
    async with service(ctx, f"{SCENARIO}-api-{prefix.rsplit('.', 2)[-2]}", argv, env, PORT) as svc:
        yield svc


async def call(http: aiohttp.ClientSession, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    """One API request; (status, JSON body)."""
    async with http.request(method, f"{API}{path}", json=body, headers={"X-API-Key": key}) as r:
        return r.status, await r.json()


async def topic_total(consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> int:
    """Records in the topic: the sum of its partitions' end offsets (no transactions, so no markers)."""
    return sum((await consumer.end_offsets(parts)).values())


async def confirm_and_measure(ctx: Context, conn: asyncpg.Connection, key: str, list_id: int, n: int,
                              prefix: str, cap_s: float) -> dict[str, Any]:
    """Create, price and confirm a campaign on ``list_id`` in a fresh api process; wait until its ``n`` send
    requests are acknowledged; its timings and the process's peak RSS before and after."""
    topic = Topics(prefix).send_requests
    async with api_process(ctx, prefix) as api, aiohttp.ClientSession() as http:
        status, camp = await call(http, "POST", "/campaigns", key, {
            "name": f"bench {n}", "sendingMode": "SMS", "smsSender": "BenchShop", "smsBody": BODY,
            "destinationType": 1, "contactListIds": [list_id], "readyToSend": True})
        assert status == 201, camp
        cid = camp["id"]
        status, goal = await call(http, "POST", f"/campaigns/{cid}/calculateGoal", key)
        assert status == 200 and goal["totalDestinations"] == n, goal
        # A group-less consumer subscribed to the topic learns its partitions; it only reads end offsets.
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
            assert parts and await topic_total(consumer, parts) == 0, f"{topic} is not empty"
            before_kib = vmhwm_kib(api.pid)
            meter = CpuMeter({"api": [api.pid], **shared_infra()})
            meter.start()
            t0 = time.monotonic()
            status, confirmed = await call(http, "PUT", f"/campaigns/{cid}/confirm", key)
            confirm_ms = (time.monotonic() - t0) * 1000
            assert status == 202, confirmed
            async with profiling.maybe(ctx, f"{SCENARIO}-api-{n}", api.pid, 10.0 if ctx.quick else 20.0) as prof:
                deadline = t0 + cap_s
                last_print = t0
                row: asyncpg.Record | None = None
                produced = 0
                while time.monotonic() < deadline:
                    row = await conn.fetchrow(
                        "select expanded, expansion_done, status, expansion_attempts, confirmed_at, started_at,"
                        " updated_at from campaigns where campaign_id = $1", cid)
                    assert row is not None
                    produced = await topic_total(consumer, parts)
                    if row["expansion_done"] and produced >= n:
                        break
                    if time.monotonic() - last_print > 10:
                        progress(f"  {n}: {produced} send requests acknowledged")
                        last_print = time.monotonic()
                    await asyncio.sleep(0.2)
                observed_s = time.monotonic() - t0
            cpu = meter.stop(produced)
            after_kib = vmhwm_kib(api.pid)
        finally:
            await consumer.stop()
    assert row is not None
    done = bool(row["expansion_done"])
    # The runner's own timestamps: confirmation to the commit that saved the last batch's cursor (written
    # right after that batch was acknowledged), free of this loop's polling period.
    expand_s = (row["updated_at"] - row["confirmed_at"]).total_seconds() if done else None
    runner_s = (row["updated_at"] - row["started_at"]).total_seconds() if done else None
    return {
        "recipients": n, "complete": done and produced == n == row["expanded"], "cpu": cpu,
        "send_requests_in_topic": produced, "expanded": row["expanded"],
        "duplicates": max(0, produced - n), "expansion_attempts": row["expansion_attempts"],
        "confirm_ms": round(confirm_ms, 1),
        "confirm_to_all_acknowledged_s": None if expand_s is None else round(expand_s, 2),
        "runner_s": None if runner_s is None else round(runner_s, 2),
        "observed_s": round(observed_s, 2),
        "send_requests_per_s": None if not runner_s else round(n / runner_s, 1),
        "peak_rss_before_mib": round(before_kib / 1024, 1), "peak_rss_after_mib": round(after_kib / 1024, 1),
        "peak_rss_growth_mib": round((after_kib - before_kib) / 1024, 1),
        **prof.result(),
    }


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Load the lists, measure the producer baseline, then the 10,000 and the large campaign."""
    n, cap_s = sizes(ctx.quick)
    await reset_database(ctx, SCENARIO)
    conn = await asyncpg.connect(ctx.database_url)
    try:
        account_id, key = await accounts.create_account(conn, "bench-campaigns")
        # Enough credit for both campaigns at any configured SMS price.
        await conn.execute("update accounts set credit = 1e9 where account_id = $1", account_id)
        progress(f"{SCENARIO}: loading {n:,} + {SMALL:,} contacts with insert … select generate_series")
        t = time.monotonic()
        big = await asyncio.wait_for(load_list(conn, account_id, n, "+44790"), 600)
        small = await load_list(conn, account_id, SMALL, "+44795")
        await conn.execute("analyze contacts; analyze contact_list_members; analyze contact_lists")
        load_s = time.monotonic() - t
        progress(f"  loaded in {load_s:.1f}s; baseline: aiokafka producing {n:,} send-request-sized records")
        batch = [sample_record(i) for i in range(BATCH)]
        # The runner's shape: batches of BATCH records, each awaited whole before the next (concurrency 1).
        base = await baselines.kafka_produce(ctx, SCENARIO, [batch] * (n // BATCH), concurrency=1)
        progress(f"  baseline_kafka: {base['events_per_s']:,.0f} records/s "
                 f"({len(batch[0][1])} bytes each); campaign of {SMALL:,}")
        prefix = ctx.prefix(SCENARIO)
        ref = await confirm_and_measure(ctx, conn, key, small, SMALL, prefix + "small.", 120.0)
        progress(f"  {SMALL:,}: {ref['send_requests_per_s']} send requests/s, peak RSS "
                 f"+{ref['peak_rss_growth_mib']} MiB; campaign of {n:,}")
        large = await confirm_and_measure(ctx, conn, key, big, n, prefix + "large.", cap_s)
        progress(f"  {n:,}: {large['send_requests_per_s']} send requests/s in {large['runner_s']}s, peak RSS "
                 f"{large['peak_rss_before_mib']} -> {large['peak_rss_after_mib']} MiB")
    finally:
        # The contacts are this scenario's alone (hundreds of MB at 1,000,000): leave the bench database as
        # small as the other scenarios do, whatever happened.
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("truncate campaigns, contact_list_members, contact_lists, contacts")
        await conn.close()
    growth, ref_growth = large["peak_rss_growth_mib"], ref["peak_rss_growth_mib"]
    rate = large["send_requests_per_s"]
    throughput_ratio = round(rate / base["events_per_s"], 3) if rate and base["events_per_s"] else None
    met = bool(large["complete"] and ref["complete"] and growth <= 1.5 * max(ref_growth, 0.0) + SLACK_MIB)
    return {
        "value": growth,
        "unit": f"MiB peak-RSS growth of the api process, {n:,} recipients (baseline: {SMALL:,}); "
                f"{rate or 0:,.0f} send requests/s = {throughput_ratio} x aiokafka",
        "baseline": ref_growth,
        "ratio": round(growth / ref_growth, 2) if ref_growth > 0 else None,
        "target": TARGET, "met": met,
        "send_requests_per_s": rate, "throughput_ratio_to_baseline_kafka": throughput_ratio,
        "baseline_kafka": {**base, "shape": f"batches of {BATCH} awaited one at a time, ingress producer settings",
                           "record_bytes": len(batch[0][1])},
        "large": large, "small": ref, "load_s": round(load_s, 1),
        "method": "peak RSS = VmHWM of the api process (runner included) read before confirm and after the "
                  "last batch is acknowledged; time = confirmed_at to the commit of the last cursor; counts = "
                  "end offsets of the run's own send-requests topic",
    }
