"""Canonical events through the real ingress, Kafka, projector and Postgres, read back from the API."""

from __future__ import annotations

from typing import Any

import aiohttp

from support.live import (
    Account,
    LiveServer,
    post_events,
    read_topic_to_end,
    status,
    submitted,
    uid,
    wait_projected,
    wait_until,
)

P = "/partner-gateway/v1"


async def get_status(http: aiohttp.ClientSession, server: LiveServer, account: Account, cid: str,
                     channel: str = "SMS") -> tuple[int, dict[str, Any]]:
    async with http.get(f"{server.url}{P}/messages/status/{cid}", params={"channel": channel},
                        headers=account.headers) as resp:
        return resp.status, await resp.json()


async def await_status(http: aiohttp.ClientSession, server: LiveServer, account: Account, cid: str,
                       expected: str, channel: str = "SMS") -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body = await get_status(http, server, account, cid, channel)
        return body if code == 200 and body["deliveryStatus"] == expected else None

    return await wait_until(probe, what=f"{cid} to become {expected}")


async def timeline(http: aiohttp.ClientSession, server: LiveServer, account: Account, mid: str) -> dict[str, Any]:
    async with http.get(f"{server.url}{P}/messages/{mid}/events", headers=account.headers) as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def status_changes(server: LiveServer, mid: str) -> list[dict[str, Any]]:
    """Every qlara.status-changes record of message ``mid``, once the projector relayed all it stored."""
    async def relayed() -> bool:
        # An outbox row is deleted only after Kafka acknowledged its record.
        async with server_db(server) as conn:
            return not await conn.fetchval(
                "select count(*) from status_outbox where payload->>'messageId' = $1", mid)

    await wait_until(relayed, what=f"{mid}'s status changes relayed")
    return await read_topic_to_end(server.settings, server.settings.topics.status_changes,
                                   lambda v: v.get("messageId") == mid)


class TestProjection:
    """The status projection follows the rank rules whatever the order and duplication of events."""

    async def test_submitted_then_delivered(self, http, server, account) -> None:
        """A submission followed by a DELIVERED receipt is served as DELIVERED with statusCode 3."""
        sub = submitted(account.id)
        resp = await post_events(http, server, [sub, status("DELIVERED", message_id=sub["messageId"])])
        assert resp.status == 202
        body = await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")
        assert body["statusCode"] == 3
        assert body["messageId"] == sub["messageId"]
        assert body["destination"] == sub["destination"]
        assert body["deliveredAt"] is not None and body["sentAt"] is not None

    async def test_receipt_before_submission_is_reconciled(self, http, server, account) -> None:
        """A receipt that arrives before its message.submitted is kept, then applied when it lands."""
        pmid = uid("SM")
        early = status("DELIVERED", provider="twilio", provider_message_id=pmid)
        assert (await post_events(http, server, early)).status == 202

        async def orphan_stored() -> bool:
            async with server_db(server) as conn:
                return bool(await conn.fetchval(
                    "select 1 from message_events where event_id = $1 and effect = 'orphaned'", early["id"]))

        await wait_until(orphan_stored, what="orphaned receipt")
        sub = submitted(account.id, provider="twilio", provider_message_id=pmid)
        assert (await post_events(http, server, sub)).status == 202
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")
        events = (await timeline(http, server, account, sub["messageId"]))["events"]
        assert {e["eventId"]: e["effect"] for e in events} == {sub["id"]: "submitted", early["id"]: "applied"}

    async def test_duplicates_change_nothing(self, http, server, account) -> None:
        """The same event posted three times is stored once and makes one transition."""
        sub = submitted(account.id)
        delivered = status("DELIVERED", message_id=sub["messageId"])
        for _ in range(3):
            assert (await post_events(http, server, [sub, delivered, delivered])).status == 202
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")
        await wait_projected(server.settings)  # all nine records, whatever their partitions
        events = (await timeline(http, server, account, sub["messageId"]))["events"]
        assert sorted(e["eventId"] for e in events) == sorted([sub["id"], delivered["id"]])
        assert [e["effect"] for e in events if e["eventId"] == delivered["id"]] == ["applied"]
        changes = await status_changes(server, sub["messageId"])
        assert [c["status"] for c in changes] == ["DELIVERED"], changes

    async def test_out_of_order_never_regresses(self, http, server, account) -> None:
        """DELIVERED then a late SENT and RECEIVED leave the message DELIVERED (late ones superseded)."""
        sub = submitted(account.id)
        mid = sub["messageId"]
        await post_events(http, server, [sub, status("DELIVERED", message_id=mid)])
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")
        late = [status("SENT", message_id=mid), status("RECEIVED", message_id=mid)]
        await post_events(http, server, late)

        async def superseded() -> bool:
            events = (await timeline(http, server, account, mid))["events"]
            return sum(e["effect"] == "superseded" for e in events) == 2

        await wait_until(superseded, what="late receipts recorded")
        code, body = await get_status(http, server, account, sub["customerMessageId"])
        assert code == 200 and body["deliveryStatus"] == "DELIVERED"

    async def test_read_before_delivered(self, http, server, account) -> None:
        """READ arriving first implies DELIVERED: deliveredAt and readAt are both filled, status stays READ."""
        sub = submitted(account.id, channel="WHATSAPP", provider="whatsapp")
        mid = sub["messageId"]
        await post_events(http, server, [sub, status("READ", message_id=mid)])
        body = await await_status(http, server, account, sub["customerMessageId"], "READ", "WHATSAPP")
        assert body["deliveredAt"] is not None and body["readAt"] is not None
        await post_events(http, server, status("DELIVERED", message_id=mid))

        async def recorded() -> bool:
            events = (await timeline(http, server, account, mid))["events"]
            return any(e["status"] == "DELIVERED" and e["effect"] == "superseded" for e in events if "status" in e)

        await wait_until(recorded, what="late DELIVERED recorded")
        _, body = await get_status(http, server, account, sub["customerMessageId"], "WHATSAPP")
        assert body["deliveryStatus"] == "READ"

    async def test_failure_after_delivery_is_flagged_not_applied(self, http, server, account) -> None:
        """An ERROR after DELIVERED is recorded and flagged; the status stays DELIVERED."""
        sub = submitted(account.id)
        mid = sub["messageId"]
        await post_events(http, server, [sub, status("DELIVERED", message_id=mid)])
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")
        await post_events(http, server, status("ERROR", message_id=mid, error={"code": "30008"}))

        async def flagged() -> dict[str, Any] | None:
            _, body = await get_status(http, server, account, sub["customerMessageId"])
            return body if body.get("failedAfterDelivery") else None

        body = await wait_until(flagged, what="failure after delivery flagged")
        assert body["deliveryStatus"] == "DELIVERED"

    async def test_delivery_after_failure_upgrades(self, http, server, account) -> None:
        """DELIVERED after ERROR upgrades the message (multi-device and provider-retry cases)."""
        sub = submitted(account.id)
        mid = sub["messageId"]
        await post_events(http, server, [sub, status("ERROR", message_id=mid)])
        await await_status(http, server, account, sub["customerMessageId"], "ERROR")
        await post_events(http, server, status("DELIVERED", message_id=mid))
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")

    async def test_multipart_delivered_only_when_every_part_is(self, http, server, account) -> None:
        """A 3-part SMS whose parts have their own provider ids is DELIVERED only after the third part."""
        p1, p2, p3 = uid("v1-"), uid("v2-"), uid("v3-")
        sub = submitted(account.id, provider="vonage", provider_message_id=p1, parts=3, part_ids=[p2, p3])
        await post_events(http, server, [sub, status("DELIVERED", provider="vonage", provider_message_id=p1),
                                         status("DELIVERED", provider="vonage", provider_message_id=p2)])
        await wait_projected(server.settings)  # the submission and both part receipts are in Postgres
        events = (await timeline(http, server, account, sub["messageId"]))["events"]
        assert len([e for e in events if e["type"] == "message.status"]) == 2, events
        _, body = await get_status(http, server, account, sub["customerMessageId"])
        assert body["deliveryStatus"] == "SENT" and body["parts"] == 3
        await post_events(http, server, status("DELIVERED", provider="vonage", provider_message_id=p3))
        await await_status(http, server, account, sub["customerMessageId"], "DELIVERED")

    async def test_multipart_mixed_result_is_reported(self, http, server, account) -> None:
        """Two parts delivered and one failed make an ERROR described as partially delivered."""
        sub = submitted(account.id, parts=3)
        mid = sub["messageId"]
        await post_events(http, server, [sub, status("DELIVERED", message_id=mid, part=1),
                                         status("EXPIRED", message_id=mid, part=2),
                                         status("DELIVERED", message_id=mid, part=3)])
        body = await await_status(http, server, account, sub["customerMessageId"], "EXPIRED")
        assert body["deliveryStatusDescription"].startswith("Partially delivered: 2 of 3")


class TestTenancy:
    """Another account's message does not exist for the caller."""

    async def test_other_accounts_message_is_404(self, http, server, account, other_account) -> None:
        """Status, per-channel status and timeline of another account's message all answer 404."""
        sub = submitted(account.id, channel="WHATSAPP", provider="whatsapp")
        await post_events(http, server, sub)
        await await_status(http, server, account, sub["customerMessageId"], "SENT", "WHATSAPP")
        code, body = await get_status(http, server, other_account, sub["customerMessageId"], "WHATSAPP")
        assert code == 404 and body["status"] == 404 and body["error"] == "Not Found"
        for path in (f"/whatsapp/messages/{sub['messageId']}/status", f"/messages/{sub['messageId']}/events"):
            async with http.get(f"{server.url}{P}{path}", headers=other_account.headers) as resp:
                assert resp.status == 404
        async with http.get(f"{server.url}{P}/messages/status", headers=other_account.headers,
                            params={"ids": sub["customerMessageId"], "channel": "WHATSAPP"}) as resp:
            assert resp.status == 200 and await resp.json() == []


def server_db(server: LiveServer):  # type: ignore[no-untyped-def]  # -- a short-lived connection context
    import asyncpg

    class _Conn:
        async def __aenter__(self) -> asyncpg.Connection:
            self.conn = await asyncpg.connect(server.settings.database_url)
            return self.conn

        async def __aexit__(self, *exc: object) -> None:
            await self.conn.close()

    return _Conn()
