"""Each provider's signed callback through the real ingress and Kafka into the projection; forgeries refused."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest

from qlara_events.config import DEV_SECRETS

from support.live import (
    Account,
    LiveServer,
    post_events,
    read_topic,
    read_topic_to_end,
    sign_canonical,
    submitted,
    uid,
    wait_until,
)
from unit.providers.signing import (
    basic_auth,
    rbm_envelope,
    rbm_signature,
    twilio_signature,
    vonage_signature,
    whatsapp_signature,
)

P = "/partner-gateway/v1"
FORM = "application/x-www-form-urlencoded"


def _path(provider: str) -> str:
    return f"/ingest/v1/providers/{provider}"


def twilio_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    form = [("MessageSid", pmid), ("SmsSid", pmid), ("MessageStatus", status), ("To", "+393331112233"),
            ("From", "+15005550006"), ("AccountSid", "AC" + "0" * 32), ("ApiVersion", "2010-04-01")]
    url = server.settings.base_url + _path("twilio")
    sig = twilio_signature(DEV_SECRETS["QLARA_TWILIO_AUTH_TOKEN"] + ("x" if forge else ""), url, form)
    return {"data": urlencode(form), "headers": {"X-Twilio-Signature": sig, "Content-Type": FORM}}


def vonage_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    fields = {"messageId": pmid, "msisdn": "393331112233", "to": "QLARA", "network-code": "22201",
              "status": status, "err-code": "0", "message-timestamp": "2026-11-26 10:00:00",
              "timestamp": str(int(time.time()))}
    # Vonage signs the fields themselves: a forgery is a receipt whose status was changed after signing.
    signed = {**fields, "status": "delivered"} if forge else fields
    fields["sig"] = vonage_signature(DEV_SECRETS["QLARA_VONAGE_SIGNATURE_SECRET"], "md5hash", signed)
    return {"data": urlencode(fields), "headers": {"Content-Type": FORM}}


def infobip_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    groups = {"DELIVERED_TO_HANDSET": (3, 5), "PENDING_ENROUTE": (1, 7), "UNDELIVERABLE_NOT_DELIVERED": (2, 9)}
    gid, sid = groups[status]
    body = {"results": [{"messageId": pmid, "bulkId": "b-1", "to": "393331112233",
                         "sentAt": "2026-11-26T10:00:00.000+0000", "doneAt": "2026-11-26T10:00:05.000+0000",
                         "status": {"groupId": gid, "groupName": "X", "id": sid, "name": status},
                         "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR",
                                   "permanent": False}}]}
    token = DEV_SECRETS["QLARA_INFOBIP_TOKEN"] + ("x" if forge else "")
    return {"data": orjson.dumps(body), "headers": {"Authorization": basic_auth("qlara", token),
                                                    "Content-Type": "application/json"}}


def whatsapp_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1234"},
            "statuses": [{"id": pmid, "status": status, "timestamp": str(int(time.time())),
                          "recipient_id": "393331112233"}]}}]}]})
    secret = DEV_SECRETS["QLARA_WHATSAPP_APP_SECRET"] + ("x" if forge else "")
    return {"data": body, "headers": {"X-Hub-Signature-256": whatsapp_signature(secret, body),
                                      "Content-Type": "application/json"}}


def rbm_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    envelope, data = rbm_envelope({"senderPhoneNumber": "+393331112233", "eventType": status,
                                   "eventId": uid("MxEv"), "messageId": pmid,
                                   "sendTime": "2026-11-26T10:00:00.123456789Z", "agentId": "agent@rbm"})
    token = DEV_SECRETS["QLARA_RBM_CLIENT_TOKEN"] + ("x" if forge else "")
    return {"data": envelope, "headers": {"X-Goog-Signature": rbm_signature(token, data),
                                          "Content-Type": "application/json"}}


def jasmin_request(server: LiveServer, pmid: str, status: str, *, forge: bool = False) -> dict[str, Any]:
    form = {"id": pmid, "level": "2", "message_status": status, "connector": "smsc1", "id_smsc": "abc",
            "sub": "001", "dlvrd": "001", "subdate": "2611261000", "donedate": "2611261001", "err": "000",
            "text": "hello"}
    token = DEV_SECRETS["QLARA_JASMIN_TOKEN"] + ("x" if forge else "")
    return {"data": urlencode(form), "headers": {"Content-Type": FORM}, "params": {"token": token}}


#: provider, channel, request builder, provider status word, expected deliveryStatus, expected body
CASES = [
    ("twilio", "SMS", twilio_request, "delivered", "DELIVERED", b""),
    ("vonage", "SMS", vonage_request, "delivered", "DELIVERED", b""),
    ("infobip", "SMS", infobip_request, "DELIVERED_TO_HANDSET", "DELIVERED", b""),
    ("whatsapp", "WHATSAPP", whatsapp_request, "read", "READ", b""),
    ("rbm", "RCS", rbm_request, "DELIVERED", "DELIVERED", b""),
    ("jasmin", "SMS", jasmin_request, "DELIVRD", "DELIVERED", b"ACK/Jasmin"),
]
#: A forgery claims another status than the genuine receipt, so a stored forgery is a different event
#: (event ids are derived from the receipt) with a status the genuine one never has.
FORGED_STATUS = {"twilio": ("undelivered", "ERROR"), "vonage": ("failed", "ERROR"),
                 "infobip": ("UNDELIVERABLE_NOT_DELIVERED", "ERROR"), "whatsapp": ("failed", "ERROR"),
                 "rbm": ("READ", "READ"), "jasmin": ("UNDELIV", "ERROR")}


async def _status(http: aiohttp.ClientSession, server: LiveServer, account: Account, cid: str,
                  channel: str) -> dict[str, Any]:
    async with http.get(f"{server.url}{P}/messages/status/{cid}", params={"channel": channel},
                        headers=account.headers) as resp:
        return await resp.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(("provider", "channel", "build", "raw", "expected", "reply"), CASES,
                         ids=[c[0] for c in CASES])
class TestProviderEndpoints:
    """A provider-signed receipt moves the message's status; a forged one is refused and never stored."""

    async def test_signed_receipt_is_projected(self, http, server, account, provider, channel, build, raw,
                                               expected, reply) -> None:
        """The signed sample answers 200 (only after Kafka acked) and the message reaches its status."""
        pmid = uid("pm")
        sub = submitted(account.id, provider=provider, provider_message_id=pmid, channel=channel)
        assert (await post_events(http, server, sub)).status == 202
        async with http.post(f"{server.url}{_path(provider)}", **build(server, pmid, raw)) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == reply

        async def reached() -> dict[str, Any] | None:
            body = await _status(http, server, account, sub["customerMessageId"], channel)
            return body if body.get("deliveryStatus") == expected else None

        await wait_until(reached, what=f"{provider} receipt projected")

    async def test_forged_receipt_is_rejected(self, http, server, account, provider, channel, build, raw,
                                              expected, reply) -> None:
        """A wrong signature or token is a 401 with the JSON error body, and the forged status is never stored."""
        pmid = uid("pm")
        sub = submitted(account.id, provider=provider, provider_message_id=pmid, channel=channel)
        await post_events(http, server, sub)
        forged_raw, forged_status = FORGED_STATUS[provider]
        assert forged_status != expected
        async with http.post(f"{server.url}{_path(provider)}", **build(server, pmid, forged_raw, forge=True)) as resp:
            assert resp.status == 401
            body = await resp.json()
            assert body["status"] == 401 and body["error"] == "Unauthorized" and body["message"]
        # The genuine receipt, posted after the forgery, shares its Kafka key (the provider identity) and so its
        # partition: once it is stored, a forgery that had been published would have been stored before it.
        async with http.post(f"{server.url}{_path(provider)}", **build(server, pmid, raw)) as resp:
            assert resp.status == 200

        async def settled() -> list[str | None] | None:
            async with http.get(f"{server.url}{P}/messages/{sub['messageId']}/events",
                                headers=account.headers) as r:
                if r.status == 404:  # the submission is not projected yet
                    return None
                body = await r.json()
            statuses = [e.get("status") for e in body["events"] if e["type"] == "message.status"]
            return statuses if expected in statuses else None

        statuses = await wait_until(settled, what="genuine receipt stored")
        assert statuses == [expected], f"the forged {forged_status} was stored: {statuses}"


class TestHandshakes:
    """Subscription handshakes answer exactly what the providers expect."""

    async def test_whatsapp_verify(self, http, server) -> None:
        """GET with the right verify token echoes the challenge; a wrong token is 403."""
        params = {"hub.mode": "subscribe", "hub.verify_token": DEV_SECRETS["QLARA_WHATSAPP_VERIFY_TOKEN"],
                  "hub.challenge": "1158201444"}
        async with http.get(f"{server.url}{_path('whatsapp')}", params=params) as resp:
            assert resp.status == 200 and await resp.text() == "1158201444"
        params["hub.verify_token"] = "wrong"
        async with http.get(f"{server.url}{_path('whatsapp')}", params=params) as resp:
            assert resp.status == 403 and (await resp.json())["status"] == 403

    async def test_rbm_setup(self, http, server) -> None:
        """Google's setup POST is answered with the secret it sent."""
        body = {"clientToken": DEV_SECRETS["QLARA_RBM_CLIENT_TOKEN"], "secret": "s3cr3t-echo"}
        async with http.post(f"{server.url}{_path('rbm')}", json=body) as resp:
            assert resp.status == 200 and await resp.text() == "s3cr3t-echo"


class TestRejections:
    """Bad input gets a clear 4xx with a JSON body; authenticated bad payloads are kept."""

    async def test_malformed_authenticated_payload_is_dead_lettered(self, http, server) -> None:
        """A correctly signed WhatsApp body that is not a webhook payload is a 400 and kept raw in Kafka."""
        marker = uid("garbage-")
        body = orjson.dumps({"object": "whatsapp_business_account", "entry": marker})
        sig = whatsapp_signature(DEV_SECRETS["QLARA_WHATSAPP_APP_SECRET"], body)
        async with http.post(f"{server.url}{_path('whatsapp')}", data=body,
                             headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["status"] == 400
        kept = await read_topic(server.settings, server.settings.topics.ingest_rejected,
                                lambda v: marker in v["body"])
        assert kept[0]["via"] == "whatsapp"
        assert kept[0]["headers"]["x-hub-signature-256"] == "[redacted]"

    async def test_invalid_canonical_event_names_the_field(self, http, server, account) -> None:
        """A canonical batch with one bad event is rejected whole, naming the event and field."""
        good = submitted(account.id)
        bad = submitted(account.id)
        bad["channel"] = "FAX"
        body = orjson.dumps([good, bad])
        async with http.post(f"{server.url}/ingest/v1/events", data=body,
                             headers=sign_canonical(server.settings, body)) as resp:
            assert resp.status == 400
            error = await resp.json()
        assert error["status"] == 400 and "event 1" in error["message"] and "channel" in error["message"], error
        # Anything the request published was acknowledged before the 400 was sent, so it is below the end
        # offsets read now.
        published = await read_topic_to_end(server.settings, server.settings.topics.delivery_events,
                                            lambda v: v.get("id") in (good["id"], bad["id"]))
        assert published == []

    async def test_unsigned_canonical_is_401(self, http, server) -> None:
        """Canonical events without Standard Webhooks headers are refused."""
        async with http.post(f"{server.url}/ingest/v1/events", json={"type": "message.status"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "Unauthorized"

    async def test_too_large_is_413(self, http, server) -> None:
        """A body declared over 1 MiB is refused with 413 from its Content-Length."""
        body = io.BytesIO(b"[" + b" " * (1024 * 1024 + 10) + b"]")
        async with http.post(f"{server.url}/ingest/v1/events", data=body,
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["status"] == 413

    async def test_chunked_too_large_is_413(self, http, server) -> None:
        """A chunked body (no Content-Length) is cut off with 413 once it passes 1 MiB."""
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(64):  # up to 4 MiB, far past the limit
                sent += 65536
                yield b" " * 65536

        async with http.post(f"{server.url}/ingest/v1/events", data=chunks(),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["status"] == 413

    async def test_too_many_events_is_413(self, http, server, account) -> None:
        """More than 1,000 events in one request is a 413."""
        resp = await post_events(http, server, [submitted(account.id) for _ in range(1001)])
        assert resp.status == 413

    async def test_unknown_provider_is_404(self, http, server) -> None:
        """An endpoint for a provider that is not configured answers 404 with the JSON body."""
        async with http.post(f"{server.url}/ingest/v1/providers/sinch", data=b"x") as resp:
            assert resp.status == 404
            assert (await resp.json())["status"] == 404
