"""Partner webhooks end to end: real receivers on loopback, real Kafka and Postgres, the real dispatcher."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from qlara_events.config import DEV_SECRETS

from support.live import Account, LiveServer, post_events, serve, status, submitted, uid, wait_until
from support.receiver import Receiver, start_receiver
from support.settings import make_settings, new_account
from unit.providers.signing import twilio_signature

P = "/partner-gateway/v1"
HOOK = f"{P}/webhooks/delivery-status"


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async for r in start_receiver():
        yield r


async def register(http: aiohttp.ClientSession, server: LiveServer, account: Account, url: str) -> dict[str, Any]:
    async with http.post(f"{server.url}{HOOK}", json={"callbackUrl": url}, headers=account.headers) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def deliveries(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                     **params: str) -> list[dict[str, Any]]:
    async with http.get(f"{server.url}{HOOK}/deliveries", params=params, headers=account.headers) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["items"]  # type: ignore[no-any-return]


def delivered(account_id: str) -> list[dict[str, Any]]:
    """A submission and its DELIVERED receipt: one status change, so one webhook."""
    sub = submitted(account_id)
    return [sub, status("DELIVERED", message_id=sub["messageId"])]


def verify(secret: str, received: Any) -> dict[str, Any]:
    """Verify with the reference Standard Webhooks library, unchanged."""
    return Webhook(secret).verify(received.body, received.headers)  # type: ignore[no-any-return]


class TestConfiguration:
    """One webhook per account: create, read, replace, delete, rotate."""

    async def test_lifecycle(self, http, server, account, receiver) -> None:
        """POST 201 (secret shown), second POST 409, GET 200, PUT 200, DELETE 204, then 404s."""
        url = receiver.endpoint("ok", uid())
        created = await register(http, server, account, url)
        assert created["signingSecret"].startswith("whsec_") and created["status"] == "ACTIVE"
        assert len(Webhook(created["signingSecret"])._whsecret) == 32  # type: ignore[attr-defined]  # -- key size
        async with http.post(f"{server.url}{HOOK}", json={"callbackUrl": url}, headers=account.headers) as r:
            assert r.status == 409 and (await r.json())["status"] == 409
        async with http.get(f"{server.url}{HOOK}", headers=account.headers) as r:
            assert r.status == 200 and (await r.json())["signingSecret"] == created["signingSecret"]
        new_url = receiver.endpoint("ok", uid())
        async with http.put(f"{server.url}{HOOK}", json={"callbackUrl": new_url}, headers=account.headers) as r:
            assert r.status == 200 and (await r.json())["callbackUrl"] == new_url
        async with http.delete(f"{server.url}{HOOK}", headers=account.headers) as r:
            assert r.status == 204
        for method in ("GET", "PUT", "DELETE"):
            async with http.request(method, f"{server.url}{HOOK}", json={"callbackUrl": url},
                                    headers=account.headers) as r:
                assert r.status == 404, method

    @pytest.mark.parametrize("body", [{}, {"callbackUrl": ""}, {"callbackUrl": "not a url"},
                                      {"callbackUrl": "ftp://example.com/x"}, [1]])
    async def test_bad_urls(self, http, server, account, body) -> None:
        """A missing or malformed callbackUrl is a 400 with the JSON error body."""
        async with http.post(f"{server.url}{HOOK}", json=body, headers=account.headers) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "Bad Request"


class TestDelivery:
    """What partners receive, and how failures are retried."""

    async def test_provider_receipt_reaches_partner_signed(self, http, server, account, receiver) -> None:
        """A Twilio receipt posted to the ingress reaches the partner as a signed DELIVERY payload."""
        token = uid()
        hook = await register(http, server, account, receiver.endpoint("ok", token))
        pmid = uid("SM")
        sub = submitted(account.id, provider="twilio", provider_message_id=pmid)
        await post_events(http, server, sub)
        form = [("MessageSid", pmid), ("MessageStatus", "delivered")]
        url = server.settings.base_url + "/ingest/v1/providers/twilio"
        sig = twilio_signature(DEV_SECRETS["QLARA_TWILIO_AUTH_TOKEN"], url, form)
        async with http.post(f"{server.url}/ingest/v1/providers/twilio", data=urlencode(form),
                             headers={"X-Twilio-Signature": sig,
                                      "Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 200
        got = await receiver.wait_for(token, 1)
        payload = verify(hook["signingSecret"], got[0])
        assert payload == {
            "eventType": "DELIVERY", "messageId": sub["messageId"], "customerMessageId": sub["customerMessageId"],
            "destination": sub["destination"], "statusCode": 3, "description": "Message delivered",
            "channel": "SMS", "timestamp": payload["timestamp"], "deliveryStatus": "DELIVERED",
        }
        assert got[0].headers["User-Agent"].startswith("qlara-events/")

    async def test_read_event(self, http, server, account, receiver) -> None:
        """A WhatsApp READ arrives as eventType READ."""
        token = uid()
        hook = await register(http, server, account, receiver.endpoint("ok", token))
        sub = submitted(account.id, channel="WHATSAPP", provider="whatsapp")
        await post_events(http, server, [sub, status("READ", message_id=sub["messageId"])])
        got = await receiver.wait_for(token, 1)
        assert verify(hook["signingSecret"], got[0])["eventType"] == "READ"

    async def test_inbound_event(self, http, server, account, receiver) -> None:
        """An inbound message for the account arrives as eventType INBOUND."""
        token = uid()
        hook = await register(http, server, account, receiver.endpoint("ok", token))
        inbound = {"type": "message.inbound", "id": uid("in-"), "occurredAt": "2026-04-02T09:05:02Z",
                   "accountId": account.id, "channel": "WHATSAPP", "source": "+393331112233",
                   "destination": "+393400000001", "text": "Confermo, grazie", "messageType": "TEXT"}
        await post_events(http, server, inbound)
        got = await receiver.wait_for(token, 1)
        body = verify(hook["signingSecret"], got[0])
        assert body["eventType"] == "INBOUND" and body["text"] == "Confermo, grazie"
        assert body["source"] == "+393331112233" and body["messageType"] == "TEXT"

    async def test_failures_retry_with_same_id_then_dead_then_recover(self, http, server, account,
                                                                      receiver) -> None:
        """A 500 receiver gets every scheduled attempt with one webhook-id; then dead, then replayable."""
        token = uid()
        await register(http, server, account, receiver.endpoint("fail", token))
        await post_events(http, server, delivered(account.id))
        got = await receiver.wait_for(token, 4)
        assert len({g.headers["webhook-id"] for g in got}) == 1

        async def dead() -> list[dict[str, Any]]:
            return await deliveries(http, server, account, status="dead")

        [item] = await wait_until(dead, what="delivery dead-lettered")
        assert item["attempts"] == 4 and item["responseCode"] == 500 and len(item["attemptLog"]) == 4
        now = dt.datetime.now(dt.UTC)
        async with http.post(f"{server.url}{HOOK}/deliveries/recover", headers=account.headers,
                             json={"since": (now - dt.timedelta(hours=1)).isoformat(),
                                   "until": (now + dt.timedelta(hours=1)).isoformat()}) as r:
            assert r.status == 202 and (await r.json())["scheduled"] == 1
        again = await receiver.wait_for(token, 5)
        assert again[-1].headers["webhook-id"] == got[0].headers["webhook-id"]

    async def test_gone_disables_webhook(self, http, server, account, receiver) -> None:
        """410 Gone disables the webhook, with the reason and time visible in GET."""
        token = uid()
        await register(http, server, account, receiver.endpoint("gone", token))
        await post_events(http, server, delivered(account.id))
        await receiver.wait_for(token, 1)

        async def disabled() -> dict[str, Any] | None:
            async with http.get(f"{server.url}{HOOK}", headers=account.headers) as r:
                body = await r.json()
            return body if body["status"] == "DISABLED" else None

        body = await wait_until(disabled, what="webhook disabled")
        assert "410" in body["disabledReason"] and body["disabledAt"]
        # No retry follows the 410: the delivery is finished (dead) after one attempt, nothing is scheduled.
        [item] = await deliveries(http, server, account)
        assert item["status"] == "dead" and item["attempts"] == 1 and item["nextAttemptAt"] is None
        assert [a["outcome"] for a in item["attemptLog"]] == ["gone"]
        assert len(receiver.requests[token]) == 1

    async def test_retry_after_is_honoured(self, http, server, account, receiver) -> None:
        """A 429 with Retry-After: 2 schedules the next attempt at least 2 s later (the schedule says 0.3 s)."""
        token = uid()
        await register(http, server, account, receiver.endpoint("busy", token))
        await post_events(http, server, delivered(account.id))
        got = await receiver.wait_for(token, 2, timeout=20)
        # Retry-After is a floor that jitter never undercuts, counted from after the first answer arrived.
        assert got[1].at - got[0].at >= 2.0

    @pytest.mark.parametrize(("behaviour", "error"), [
        ("redirect", "redirects are not followed"), ("reset", "connection to the webhook URL failed"), ("hang", "timed out"),
    ])
    async def test_failure_kinds_are_logged(self, http, server, account, receiver, behaviour, error) -> None:
        """Redirects are not followed, resets and hangs are failures; each is logged with its error."""
        token = uid()
        await register(http, server, account, receiver.endpoint(behaviour, token))
        await post_events(http, server, delivered(account.id))
        await receiver.wait_for(token, 1)

        async def failed() -> list[dict[str, Any]]:
            return [d for d in await deliveries(http, server, account) if d["attempts"] >= 1 and d["error"]]

        [item] = await wait_until(failed, what=f"{behaviour} failure logged")
        assert error in item["error"]
        assert not receiver.requests[f"{token}-redirected"]

    async def test_lower_status_after_ack_is_superseded(self, http, server, account, receiver) -> None:
        """A RECEIVED whose delivery must be retried is not sent after the partner acknowledged DELIVERED."""
        token = uid()
        await register(http, server, account, receiver.endpoint("finalonly", token))
        sub = submitted(account.id, channel="RCS", provider="rbm")
        await post_events(http, server, [sub, status("RECEIVED", message_id=sub["messageId"])])
        await receiver.wait_for(token, 1)
        await post_events(http, server, status("DELIVERED", message_id=sub["messageId"]))

        async def superseded() -> list[dict[str, Any]]:
            return await deliveries(http, server, account, status="superseded")

        [item] = await wait_until(superseded, what="superseded delivery")
        assert item["attempts"] == 2 and item["attemptLog"][-1]["outcome"] == "superseded"
        statuses = [r.json["deliveryStatus"] for r in receiver.requests[token]]
        assert statuses == ["RECEIVED", "DELIVERED"]  # the RECEIVED retry was never sent

    async def test_rotation_signs_with_both_secrets(self, http, server, account, receiver) -> None:
        """After rotate-secret, each attempt verifies with the old and with the new secret."""
        token = uid()
        old = (await register(http, server, account, receiver.endpoint("ok", token)))["signingSecret"]
        async with http.post(f"{server.url}{HOOK}/rotate-secret", headers=account.headers) as r:
            assert r.status == 200
            rotated = await r.json()
        assert rotated["signingSecret"] != old and rotated["previousSecretExpiresAt"]
        await post_events(http, server, delivered(account.id))
        [got] = await receiver.wait_for(token, 1)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        verify(old, got)
        verify(rotated["signingSecret"], got)

    async def test_deleted_webhook_drops_queued(self, http, server, db, account, receiver) -> None:
        """Deliveries queued for a deleted webhook are dropped, not sent to a later URL."""
        token = uid()
        await register(http, server, account, receiver.endpoint("fail", token))
        await post_events(http, server, delivered(account.id))
        await receiver.wait_for(token, 1)
        async with http.delete(f"{server.url}{HOOK}", headers=account.headers) as r:
            assert r.status == 204
        later = uid()
        await register(http, server, account, receiver.endpoint("ok", later))
        marker = delivered(account.id)
        await post_events(http, server, marker)
        [got] = await receiver.wait_for(later, 1)
        assert got.json["messageId"] == marker[0]["messageId"]

        async def logged() -> list[dict[str, Any]]:
            return [d for d in await deliveries(http, server, account) if d["status"] == "succeeded"]

        await wait_until(logged, what="the marker's delivery logged")
        # The old webhook's failing delivery was deleted with it (nothing is left to retry): the new webhook's
        # log holds the marker only, and nothing else reached the new URL.
        assert [d["messageId"] for d in await deliveries(http, server, account)] == [marker[0]["messageId"]]
        assert await db.fetchval("select count(*) from webhook_deliveries d join webhooks w using (webhook_id)"
                                 " where w.account_id = $1", account.id) == 1
        assert len(receiver.requests[later]) == 1


class TestTenancy:
    """Another account's deliveries can be neither listed, nor retried, nor recovered."""

    async def test_other_accounts_deliveries(self, http, server, db, account, other_account, receiver) -> None:
        """With a webhook of its own, another account sees none of the deliveries and its retry (404) and
        recover (0 scheduled) leave the dead delivery alone; the owner's retry attempts it again."""
        token = uid()
        await register(http, server, account, receiver.endpoint("fail", token))
        await register(http, server, other_account, receiver.endpoint("ok", uid()))
        events = delivered(account.id)
        await post_events(http, server, events)

        async def dead() -> list[dict[str, Any]]:
            return await deliveries(http, server, account, status="dead")

        [item] = await wait_until(dead, what="delivery dead-lettered")
        assert len(receiver.requests[token]) == item["attempts"] == 4
        assert await deliveries(http, server, other_account) == []
        assert await deliveries(http, server, other_account, messageId=events[0]["messageId"]) == []
        async with http.post(f"{server.url}{HOOK}/deliveries/{item['deliveryId']}/retry",
                             headers=other_account.headers) as r:
            assert r.status == 404 and (await r.json())["status"] == 404
        now = dt.datetime.now(dt.UTC)
        window = {"since": (now - dt.timedelta(hours=1)).isoformat(), "until": (now + dt.timedelta(hours=1)).isoformat()}
        async with http.post(f"{server.url}{HOOK}/deliveries/recover", json=window,
                             headers=other_account.headers) as r:
            assert r.status == 202 and (await r.json())["scheduled"] == 0
        row = await db.fetchrow("select state, attempts from webhook_deliveries where delivery_id = $1",
                                item["deliveryId"])
        assert (row["state"], row["attempts"]) == ("dead", 4)
        # The owner's retry is a new round of the schedule: four more attempts, and only those.
        async with http.post(f"{server.url}{HOOK}/deliveries/{item['deliveryId']}/retry",
                             headers=account.headers) as r:
            assert r.status == 202 and (await r.json()) == {"deliveryId": item["deliveryId"], "status": "scheduled"}
        got = await receiver.wait_for(token, 8)
        assert len({g.headers["webhook-id"] for g in got}) == 1

        async def dead_again() -> list[dict[str, Any]]:
            return [d for d in await deliveries(http, server, account, status="dead") if d["attempts"] == 8]

        await wait_until(dead_again, what="the retried delivery dead again")
        assert len(receiver.requests[token]) == 8


class TestIsolation:
    """A hanging and a failing partner do not delay a healthy one."""

    async def test_healthy_partner_unaffected(self, http, server, db, receiver) -> None:
        """All healthy deliveries land while the hanging partner still holds its connections."""

        tokens = {name: uid() for name in ("ok", "hang", "fail")}
        accounts = {}
        for name in ("ok", "hang", "fail"):
            acct = await new_account(db)
            await register(http, server, acct, receiver.endpoint(name, tokens[name]))
            accounts[name] = acct
        n = 30
        for name in ("hang", "fail", "ok"):
            await post_events(http, server, [e for _ in range(n) for e in delivered(accounts[name].id)])
        cap = server.settings.webhook_concurrency_per_endpoint
        await receiver.wait_for(tokens["hang"], cap)  # the hanging partner holds all its slots
        got = await receiver.wait_for(tokens["ok"], n)
        assert len({g.json["messageId"] for g in got}) == n
        # Had the healthy partner queued behind the hanging one, it would have got a slot only once a hanging
        # attempt timed out, and the dispatcher closes a timed-out connection.
        assert receiver.hanging_closed(tokens["hang"]) == 0, "a hanging attempt ended before the healthy ones"
        assert len(receiver.requests[tokens["hang"]]) == cap


class TestSsrfAtRegistration:
    """With production defaults (HTTPS required, no allow-list) internal destinations are refused."""

    @pytest_asyncio.fixture
    async def strict_api(self, infra, db) -> AsyncIterator[LiveServer]:
        settings = make_settings(*infra, QLARA_WEBHOOK_REQUIRE_HTTPS="true", QLARA_WEBHOOK_ALLOWED_NETWORKS="")
        async with serve(settings, ["api"]) as live:
            yield live

    @pytest.mark.parametrize("url", [
        "http://hooks.example.com/dlr",            # not HTTPS
        "https://127.0.0.1/dlr", "https://[::1]/dlr", "https://10.1.2.3/dlr", "https://172.16.0.1/dlr",
        "https://192.168.1.1/dlr", "https://169.254.169.254/latest/meta-data", "https://100.64.0.1/dlr",
        "https://224.0.0.1/dlr", "https://0.0.0.0/dlr", "https://240.0.0.1/dlr", "https://[fe80::1]/dlr",
        "https://[fd00::1]/dlr", "https://[::ffff:127.0.0.1]/dlr", "https://[::ffff:10.0.0.1]/dlr",
        "https://localhost/dlr",                   # a hostname resolving to loopback
        "https://user:pass@hooks.example.com/dlr",  # credentials in the URL
    ])
    async def test_forbidden_destinations(self, http, strict_api, account, url) -> None:
        """Each forbidden URL is a 400 with a message naming the problem; nothing is stored."""
        async with http.post(f"{strict_api.url}{HOOK}", json={"callbackUrl": url}, headers=account.headers) as r:
            assert r.status == 400, url
            assert (await r.json())["message"]
        async with http.get(f"{strict_api.url}{HOOK}", headers=account.headers) as r:
            assert r.status == 404

    async def test_allow_list_admits_private_network(self, http, server, account, receiver) -> None:
        """With 127.0.0.0/8 allow-listed (the test server's setting) a loopback receiver is accepted."""
        await register(http, server, account, receiver.endpoint("ok", uid()))


class TestDispatcherCrash:
    """A dispatcher killed mid-delivery and restarted delivers every event at least once, same webhook-id."""

    async def test_kill_mid_delivery(self, http, server, db, receiver, infra) -> None:
        """SIGKILL while attempts are in flight; after a restart every event arrived, duplicates share ids."""
        import os
        import signal
        import subprocess
        import sys

        import orjson
        from aiokafka import AIOKafkaProducer


        s = make_settings(*infra, QLARA_WEBHOOK_TIMEOUT="5", QLARA_WEBHOOK_LEASE_MARGIN="1")
        # Its own topics: the in-process dispatcher of the session server does not see these changes.
        from qlara_events.kafka import ensure_topics

        await ensure_topics(s)
        account = await new_account(db)
        token = uid()
        await register(http, server, account, receiver.endpoint("slow", token))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
               "QLARA_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "QLARA_DATABASE_URL": s.database_url,
               "QLARA_KAFKA_TOPIC_PREFIX": s.topics.prefix, "QLARA_DISPATCHER_GROUP": s.consumer_group_dispatcher,
               "QLARA_WEBHOOK_REQUIRE_HTTPS": "false", "QLARA_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
               "QLARA_WEBHOOK_ALLOWED_PORTS": "1024-65535", "QLARA_WEBHOOK_TIMEOUT": "5", "QLARA_WEBHOOK_LEASE_MARGIN": "1",
               "QLARA_WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3,0.3", "QLARA_HTTP_PORT": "0", "QLARA_LOG_LEVEL": "error"}

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "qlara_events.cli", "serve", "--role", "dispatcher"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        n = 12

        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        await producer.start()
        ids = [uid("change-") for _ in range(n)]
        try:
            for cid in ids:
                change = {"id": cid, "messageId": cid, "customerMessageId": cid, "accountId": account.id,
                          "channel": "SMS", "destination": "+39333", "status": "DELIVERED", "statusCode": 3,
                          "description": "Message delivered", "occurredAt": "2026-04-02T09:01:12Z",
                          "changedAt": dt.datetime.now(dt.UTC).isoformat()}
                await producer.send_and_wait(s.topics.status_changes, orjson.dumps(change), key=cid.encode())
        finally:
            await producer.stop()
        first = spawn()
        try:
            await receiver.wait_for(token, 1, timeout=60)  # attempts are in flight (the receiver takes 1 s)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            second = spawn()
            try:
                await receiver.wait_for(token, n, timeout=60)

                async def all_ids() -> set[str] | None:
                    seen = {r.json["messageId"] for r in receiver.requests[token]}
                    return seen if seen == set(ids) else None

                await wait_until(all_ids, timeout=60, what="every change delivered")

                async def all_acknowledged() -> bool:
                    n_ok = await db.fetchval("select count(*) from webhook_deliveries where account_id = $1"
                                             " and state = 'succeeded'", account.id)
                    return bool(n_ok == n)

                # Attempts cut off by the kill are retried once their lease expires: acknowledged at last.
                await wait_until(all_acknowledged, timeout=60, what="every delivery acknowledged")
            finally:
                second.kill()
                second.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        got = receiver.requests[token]
        by_message: dict[str, set[str]] = {}
        for r in got:
            by_message.setdefault(r.json["messageId"], set()).add(r.headers["webhook-id"])
        assert set(by_message) == set(ids)
        assert all(len(hooks) == 1 for hooks in by_message.values()), "a duplicate carried another webhook-id"
        print(f"deliveries: {len(got)} for {n} changes ({len(got) - n} duplicates after the kill)")
