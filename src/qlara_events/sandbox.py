"""A sandbox upstream: plays the sending services and the providers so the whole loop runs on one machine.

It consumes ``qlara.send-requests`` and, through the real ingress over HTTP, posts what the real world
would: a signed ``message.submitted`` (canonical), then provider-native, provider-signed receipts — Twilio
for SMS, Meta WhatsApp Cloud for WhatsApp, Google RBM for RCS — with configurable delivery, failure and
read rates and delays. Offsets are committed once a request's submission was accepted; receipts are
deterministic (provider ids derive from the message id), so a replay only produces duplicates that the
projector ignores.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from qlara_events.config import Settings
from qlara_events.kafka import make_consumer, start_with_retry
from qlara_events.logs import get_logger
from qlara_events.standard_webhooks import secret_key, signature_header

log = get_logger("sandbox")

PROVIDER_OF = {"SMS": "twilio", "WHATSAPP": "whatsapp", "RCS": "rbm"}


@dataclasses.dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated world treats messages."""

    delivery_rate: float = 0.95
    read_rate: float = 0.5
    delay_s: float = 0.2
    seed: int | None = None


def provider_message_id(channel: str, message_id: str) -> str:
    """The id the simulated provider gives a message (deterministic, so replays match)."""
    digest = hashlib.sha256(message_id.encode()).hexdigest()
    if channel == "SMS":
        return "SM" + digest[:32]
    if channel == "WHATSAPP":
        return "wamid.SBX" + digest[:40]
    return "rbm-" + digest[:32]


class Sandbox:
    """The consumer loop and the HTTP calls to the ingress."""

    def __init__(self, settings: Settings, ingress_url: str, behaviour: Behaviour) -> None:
        self._s = settings
        self._url = ingress_url.rstrip("/")
        self._b = behaviour
        self._rng = random.Random(behaviour.seed)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.processed = 0

    def stop(self) -> None:
        """Stop consuming; receipts already scheduled are still posted."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume send requests until stopped."""
        s = self._s
        consumer = make_consumer(s, s.topics.send_requests, group_id=f"{s.topics.prefix}qlara-sandbox",
                                 client_id="qlara-sandbox")
        if not await start_with_retry(consumer.start, self._stopping):
            return
        async with aiohttp.ClientSession() as http:
            try:
                while not self._stopping.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=500)
                    requests = [orjson.loads(r.value) for recs in batch.values() for r in recs]
                    if not requests:
                        continue
                    await self._submit(http, requests)
                    await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
                    for req in requests:
                        task = asyncio.create_task(self._receipts(http, req))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    self.processed += len(requests)
            finally:
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=30)
                await consumer.stop()

    async def _post(self, http: aiohttp.ClientSession, path: str, body: bytes, headers: dict[str, str]) -> None:
        """POST to the ingress, retrying as providers do until it answers 2xx (bounded)."""
        for attempt in range(30):
            try:
                async with http.post(f"{self._url}{path}", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 300:
                        return
                    if resp.status < 500 and resp.status != 429:
                        log.warning("sandbox_post_refused", path=path, status=resp.status)
                        return
            except aiohttp.ClientError as exc:
                log.warning("sandbox_post_failed", path=path, error=str(exc))
            await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))

    async def _submit(self, http: aiohttp.ClientSession, requests: Sequence[dict[str, Any]]) -> None:
        assert self._s.ingest_secret, "the sandbox signs canonical events with QLARA_INGEST_SECRET"
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        events = []
        for r in requests:
            channel = r.get("channel", "SMS")
            events.append({
                "type": "message.submitted", "id": f"sandbox-sub-{r['messageId']}", "occurredAt": now,
                "accountId": r["accountId"], "channel": channel, "messageId": r["messageId"],
                "customerMessageId": r.get("customerMessageId") or r["messageId"],
                "provider": PROVIDER_OF[channel], "providerMessageId": provider_message_id(channel, r["messageId"]),
                "destination": r["destination"], "sender": (r.get("sms") or {}).get("sender") or r.get("sender"),
                "campaignId": r.get("campaignId"),
            })
        for i in range(0, len(events), 1000):
            body = orjson.dumps(events[i:i + 1000])
            ts = int(time.time())
            msg_id = "sbx_" + hashlib.sha256(body).hexdigest()[:24]
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "Content-Type": "application/json",
                       "webhook-signature": signature_header([secret_key(self._s.ingest_secret)], msg_id, ts, body)}
            await self._post(http, "/ingest/v1/events", body, headers)

    async def _receipts(self, http: aiohttp.ClientSession, r: dict[str, Any]) -> None:
        channel = r.get("channel", "SMS")
        pmid = provider_message_id(channel, r["messageId"])
        delivered = self._rng.random() < self._b.delivery_rate
        read = delivered and channel != "SMS" and self._rng.random() < self._b.read_rate
        await asyncio.sleep(self._b.delay_s * self._rng.uniform(0.5, 1.5))  # -- simulated network time
        if channel == "SMS":
            await self._twilio(http, pmid, r, "delivered" if delivered else "undelivered")
        elif channel == "WHATSAPP":
            await self._whatsapp(http, pmid, r, ["delivered", "read"] if read else
                                 ["delivered"] if delivered else ["failed"])
        else:
            await self._rbm(http, pmid, r, ["DELIVERED", "READ"] if read else ["DELIVERED"] if delivered
                            else ["TTL_EXPIRATION_REVOKED"])

    async def _twilio(self, http: aiohttp.ClientSession, pmid: str, r: dict[str, Any], status: str) -> None:
        token = self._s.twilio_auth_token
        assert token, "QLARA_TWILIO_AUTH_TOKEN is needed to sign simulated Twilio receipts"
        form = [("MessageSid", pmid), ("SmsSid", pmid), ("MessageStatus", status), ("To", r["destination"]),
                ("From", (r.get("sms") or {}).get("sender") or "QLARA")]
        if status == "undelivered":
            form.append(("ErrorCode", "30003"))
        path = "/ingest/v1/providers/twilio"
        signed = self._s.base_url + path + "".join(k + v for k, v in sorted(form))
        sig = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
        await self._post(http, path, urlencode(form).encode(),
                         {"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})

    async def _whatsapp(self, http: aiohttp.ClientSession, pmid: str, r: dict[str, Any],
                        statuses: list[str]) -> None:
        secret = self._s.whatsapp_app_secret
        assert secret, "QLARA_WHATSAPP_APP_SECRET is needed to sign simulated WhatsApp webhooks"
        ts = str(int(time.time()))
        items = []
        for st in statuses:
            item: dict[str, Any] = {"id": pmid, "status": st, "timestamp": ts,
                                    "recipient_id": r["destination"].lstrip("+")}
            if st == "failed":
                item["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
            items.append(item)
        body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "SANDBOX", "changes": [{
            "field": "messages", "value": {"messaging_product": "whatsapp",
                                           "metadata": {"display_phone_number": "15550000000",
                                                        "phone_number_id": "sandbox"},
                                           "statuses": items}}]}]})
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        await self._post(http, "/ingest/v1/providers/whatsapp", body,
                         {"X-Hub-Signature-256": sig, "Content-Type": "application/json"})

    async def _rbm(self, http: aiohttp.ClientSession, pmid: str, r: dict[str, Any], events: list[str]) -> None:
        token = self._s.rbm_client_token
        assert token, "QLARA_RBM_CLIENT_TOKEN is needed to sign simulated RBM events"
        for ev in events:
            send_time = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
            if ev.startswith("TTL_"):
                data: dict[str, Any] = {"phoneNumber": r["destination"], "eventType": ev,
                                        "eventId": f"sbx-{pmid}-{ev}", "messageId": pmid, "sendTime": send_time,
                                        "agentId": "sandbox-agent"}
            else:
                data = {"senderPhoneNumber": r["destination"], "eventType": ev, "eventId": f"sbx-{pmid}-{ev}",
                        "messageId": pmid, "sendTime": send_time, "agentId": "sandbox-agent"}
            raw = orjson.dumps(data)
            envelope = orjson.dumps({"message": {"data": base64.b64encode(raw).decode(), "messageId": f"ps-{pmid}",
                                                 "publishTime": send_time}, "subscription": "sandbox"})
            sig = base64.b64encode(hmac.new(token.encode(), raw, hashlib.sha512).digest()).decode()
            await self._post(http, "/ingest/v1/providers/rbm", envelope,
                             {"X-Goog-Signature": sig, "Content-Type": "application/json"})
