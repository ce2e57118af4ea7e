"""First attempts straight from the stream: spilling, the endpoint cache, the superseded rule on both paths.

Changes are produced straight to ``qlara.status-changes`` (on one partition where the test is about a
partition) and delivered by the session server's dispatcher to real receivers on loopback.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition

from qlara_events.domain.status import DeliveryStatus

from support.live import committed_offsets, uid, wait_until
from support.receiver import Receiver, start_receiver
from support.settings import new_account

HOOK = "/partner-gateway/v1/webhooks/delivery-status"


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async for r in start_receiver():
        yield r


@pytest_asyncio.fixture
async def producer(settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    await p.start()
    yield p
    await p.stop()


def change(account_id: str, message_id: str | None = None, status: str = "DELIVERED") -> dict[str, Any]:
    """A status-change record as the projector relays it."""
    mid = message_id or uid("m-")
    code = DeliveryStatus(status).code
    return {"id": f"{mid}:{status}", "messageId": mid, "customerMessageId": f"c-{mid}", "accountId": account_id,
            "channel": "RCS", "destination": "+393331112233", "status": status, "previousStatus": "SENT",
            "statusCode": code, "description": status.lower(), "occurredAt": "2026-04-02T09:01:12Z",
            "changedAt": dt.datetime.now(dt.UTC).isoformat(), "eventId": uid("ev-")}


async def produce(producer: AIOKafkaProducer, topic: str, changes: list[dict[str, Any]],
                  partition: int | None = None) -> int:
    """Produce in order; return the offset after the last one (of ``partition`` when given)."""
    last = None
    for c in changes:
        fut = await producer.send(topic, orjson.dumps(c), key=c["messageId"].encode(), partition=partition)
        last = await fut
    assert last is not None
    return int(last.offset) + 1


async def register(http, server, account, url: str) -> dict[str, Any]:
    async with http.post(f"{server.url}{HOOK}", json={"callbackUrl": url}, headers=account.headers) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def committed(settings, partition: int) -> int:
    """The dispatcher group's committed offset on ``partition`` of the status-changes topic (-1: none)."""
    offsets = await committed_offsets(settings, settings.consumer_group_dispatcher)
    return offsets.get(TopicPartition(settings.topics.status_changes, partition), -1)


class TestSpill:
    """A slow or dead partner never holds its partition."""

    async def test_hanging_partner_spills_and_the_partition_moves_on(self, http, server, db, receiver,
                                                                     producer) -> None:
        """With a hanging partner's changes first on a partition, a healthy account's changes behind them
        arrive while the hanging attempts are still open, the hanging partner's extra changes are written to
        the retry schedule, and the partition's offset is committed past all of them before any hanging
        attempt has timed out."""
        s = server.settings
        hang_acct, ok_acct = await new_account(db), await new_account(db)
        hang_token, ok_token = uid(), uid()
        await register(http, server, hang_acct, receiver.endpoint("hang", hang_token))
        await register(http, server, ok_acct, receiver.endpoint("ok", ok_token))
        cap = s.webhook_concurrency_per_endpoint
        stuck = [change(hang_acct.id) for _ in range(cap * 3)]
        healthy = [change(ok_acct.id) for _ in range(20)]
        end = await produce(producer, s.topics.status_changes, [*stuck, *healthy], partition=0)
        got = await receiver.wait_for(ok_token, len(healthy))
        assert {g.json["messageId"] for g in got} == {c["messageId"] for c in healthy}
        # Every healthy webhook arrived while the hanging attempts were open (a timed-out one is closed).
        assert receiver.hanging_closed(hang_token) == 0

        async def moved_on() -> bool:
            return await committed(s, 0) >= end

        await wait_until(moved_on, what="offset committed past the hanging partner")
        # ... while the hanging attempts were still open: only `cap` requests ever reached it so far.
        assert receiver.hanging_closed(hang_token) == 0, "the offset moved on only after a hanging attempt ended"
        assert len(receiver.requests[hang_token]) == cap
        rows = await db.fetch("select state, attempts from webhook_deliveries where account_id = $1", hang_acct.id)
        assert len(rows) == len(stuck)
        by_state = {st: sum(1 for r in rows if r["state"] == st) for st in {r["state"] for r in rows}}
        # The ones in flight hold leases (attempt 1); the ones that never got a slot wait as due retries.
        assert by_state.get("in_flight", 0) + by_state.get("scheduled", 0) == len(stuck), by_state
        assert sum(1 for r in rows if r["state"] == "in_flight" and r["attempts"] == 1) >= 1


class TestEndpointCache:
    """A webhook changed or deleted through the API takes effect for the very next changes."""

    async def test_url_change(self, http, server, db, receiver, producer) -> None:
        """After PUT, changes go to the new URL only; nothing more reaches the old one."""
        s = server.settings
        account = await new_account(db)
        old, new = uid(), uid()
        await register(http, server, account, receiver.endpoint("ok", old))
        await produce(producer, s.topics.status_changes, [change(account.id)])
        await receiver.wait_for(old, 1)
        async with http.put(f"{server.url}{HOOK}", json={"callbackUrl": receiver.endpoint("ok", new)},
                            headers=account.headers) as r:
            assert r.status == 200
        later = [change(account.id) for _ in range(10)]
        await produce(producer, s.topics.status_changes, later)
        got = await receiver.wait_for(new, len(later))
        assert {g.json["messageId"] for g in got} == {c["messageId"] for c in later}
        assert len(receiver.requests[old]) == 1

    async def test_delete_then_recreate(self, http, server, db, receiver, producer) -> None:
        """After DELETE, changes are not delivered anywhere; a webhook created later gets only later changes."""
        s = server.settings
        account = await new_account(db)
        first, second = uid(), uid()
        await register(http, server, account, receiver.endpoint("ok", first))
        async with http.delete(f"{server.url}{HOOK}", headers=account.headers) as r:
            assert r.status == 204
        orphaned = [change(account.id) for _ in range(5)]
        end = await produce(producer, s.topics.status_changes, orphaned, partition=0)

        async def consumed() -> bool:
            return await committed(s, 0) >= end

        await wait_until(consumed, what="dispatcher consumed the changes")
        await register(http, server, account, receiver.endpoint("ok", second))
        marker = change(account.id)
        await produce(producer, s.topics.status_changes, [marker])
        [got] = await receiver.wait_for(second, 1)
        assert got.json["messageId"] == marker["messageId"]
        assert receiver.requests[first] == []

        async def recorded() -> list[Any]:
            return list(await db.fetch("select change_id from webhook_deliveries where account_id = $1", account.id))

        rows = await wait_until(recorded, what="the marker's delivery recorded")
        assert [r["change_id"] for r in rows] == [marker["id"]]  # none for the changes made without a webhook


class TestSuperseded:
    """A lower status is never sent after a higher one was acknowledged, whichever path carries it."""

    async def test_lower_status_on_the_stream_after_ack(self, http, server, db, receiver, producer) -> None:
        """A RECEIVED that reaches the intake after the partner acknowledged DELIVERED is recorded as
        superseded and never sent."""
        s = server.settings
        account = await new_account(db)
        token = uid()
        await register(http, server, account, receiver.endpoint("ok", token))
        mid = uid("m-")
        await produce(producer, s.topics.status_changes, [change(account.id, mid, "DELIVERED")], partition=1)
        await receiver.wait_for(token, 1)

        async def acked() -> bool:
            rank = await db.fetchval("select status_rank from webhook_acked where message_id = $1", mid)
            return bool(rank == DeliveryStatus.DELIVERED.rank)

        await wait_until(acked, what="DELIVERED acknowledged")
        await produce(producer, s.topics.status_changes, [change(account.id, mid, "RECEIVED")], partition=1)
        marker = change(account.id)
        await produce(producer, s.topics.status_changes, [marker], partition=1)
        await receiver.wait_for(token, 2)  # the marker, behind the RECEIVED on the same partition

        async def superseded() -> Any:
            return await db.fetchrow("select state, attempts from webhook_deliveries where change_id = $1",
                                     f"{mid}:RECEIVED")

        row = await wait_until(superseded, what="RECEIVED recorded")
        assert row["state"] == "superseded" and row["attempts"] == 1
        assert [r.json["messageId"] for r in receiver.requests[token]] == [mid, marker["messageId"]]

    async def test_replayed_change_is_not_sent_twice(self, http, server, db, receiver, producer) -> None:
        """A change relayed twice (an outbox replay) is delivered once: its delivery row exists already."""
        s = server.settings
        account = await new_account(db)
        token = uid()
        await register(http, server, account, receiver.endpoint("ok", token))
        c = change(account.id)
        await produce(producer, s.topics.status_changes, [c], partition=2)
        await receiver.wait_for(token, 1)

        async def recorded() -> bool:
            return await db.fetchval("select state from webhook_deliveries where change_id = $1",
                                     c["id"]) == "succeeded"

        await wait_until(recorded, what="delivery recorded")
        marker = change(account.id)
        await produce(producer, s.topics.status_changes, [c, marker], partition=2)
        await receiver.wait_for(token, 2)
        assert [r.json["messageId"] for r in receiver.requests[token]] == [c["messageId"], marker["messageId"]]


class TestUnreadable:
    """A record on the change topic that is not a change cannot stop the dispatcher (issue #11, item 17)."""

    async def test_garbage_is_kept_and_the_partition_moves_on(self, http, server, db, receiver, producer) -> None:
        """Not JSON, not an object, a change without an id and one with an unknown status are kept in
        unreadable_records with their offsets; the valid change behind them is delivered; the offset moves on."""
        s = server.settings
        account = await new_account(db)
        token = uid()
        await register(http, server, account, receiver.endpoint("ok", token))
        bad_status = change(account.id)
        bad_status["status"] = "TELEPORTED"
        no_id = change(account.id)
        del no_id["id"]
        first = None
        for value in (b"\xff not json", b"[1, 2]", orjson.dumps(no_id), orjson.dumps(bad_status)):
            meta = await (await producer.send(s.topics.status_changes, value, key=b"garbage", partition=2))
            first = meta.offset if first is None else first
        good = change(account.id)
        end = await produce(producer, s.topics.status_changes, [good], partition=2)
        [got] = await receiver.wait_for(token, 1)
        assert got.json["messageId"] == good["messageId"]

        async def moved_on() -> bool:
            return await committed(s, 2) >= end

        await wait_until(moved_on, what="offset committed past the garbage")
        rows = await db.fetch('select "offset", value, error from unreadable_records where topic = $1'
                              ' and partition = 2 and "offset" >= $2 and "offset" < $3 order by "offset"',
                              s.topics.status_changes, first, end)
        assert [r["offset"] for r in rows] == list(range(first, end - 1))
        assert rows[0]["value"] == b"\xff not json" and all(r["error"] for r in rows)


class TestSsrfAtDelivery:
    """The guard runs at delivery, not only at registration: a webhook whose host is (or has come to resolve to)
    a forbidden address is refused by the dispatcher with no connection made."""

    async def test_forbidden_destination_refused_on_attempt(self, infra, db, receiver) -> None:
        """With production's empty allow-list, webhooks stored for 127.0.0.1 and for localhost (as after a DNS
        change) get a 'forbidden destination' attempt; the receiver sees no request."""
        from qlara_events.kafka import ensure_topics
        from qlara_events.standard_webhooks import new_secret
        from qlara_events.store import webhooks

        from support.live import serve
        from support.settings import make_settings

        strict = make_settings(*infra, QLARA_WEBHOOK_ALLOWED_NETWORKS="", QLARA_WEBHOOK_REQUIRE_HTTPS="false",
                               QLARA_WEBHOOK_RETRY_SCHEDULE="0")
        await ensure_topics(strict)
        port = receiver.url.rsplit(":", 1)[1]
        cases = {}
        for host in ("127.0.0.1", "localhost"):
            account = await new_account(db)
            token = uid()
            # Written directly: the API would refuse the URL at registration; this is the URL a host resolves
            # to later (DNS rebinding), or one registered before the allow-list changed.
            await webhooks.create(db, account.id, f"http://{host}:{port}/ok/{token}", new_secret())
            cases[host] = (account, token)
        async with serve(strict, ["dispatcher"]):
            p = AIOKafkaProducer(bootstrap_servers=strict.kafka_bootstrap)
            await p.start()
            try:
                for account, _ in cases.values():
                    await produce(p, strict.topics.status_changes, [change(account.id)])
            finally:
                await p.stop()
            for host, (account, token) in cases.items():
                async def refused(a=account) -> Any:
                    return await db.fetchrow("select state, last_error from webhook_deliveries where account_id = $1"
                                             " and last_error is not null", a.id)

                row = await wait_until(refused, what=f"attempt to {host} refused")
                assert row["last_error"].startswith("forbidden destination"), row["last_error"]
                assert row["state"] == "dead"  # the one-attempt schedule is exhausted
                assert receiver.requests[token] == []
