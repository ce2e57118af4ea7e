"""Events and signed requests the scenarios send: canonical (Standard Webhooks), Twilio and WhatsApp callbacks.

The provider signers are written here from the providers' documentation, not imported from the service, so a
request the ingress accepts is one a real provider could have sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson

from benchmarks.common import INGEST_SECRET, TWILIO_TOKEN, WHATSAPP_SECRET
from benchmarks.loadgen import Target
from qlara_events.standard_webhooks import secret_key, sign

_counter = itertools.count()


def unique(tag: str) -> str:
    """A run-unique id (every event needs its own)."""
    return f"{tag}-{secrets.token_hex(4)}-{next(_counter):09d}"


def now_iso() -> str:
    """Now, RFC 3339 UTC."""
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def submitted(account_id: str, message_id: str, pmid: str, provider: str = "twilio") -> dict[str, Any]:
    """A ``message.submitted`` canonical event."""
    return {"type": "message.submitted", "id": f"sub-{message_id}", "occurredAt": now_iso(), "accountId": account_id,
            "channel": "SMS", "messageId": message_id, "customerMessageId": f"c-{message_id}", "provider": provider,
            "providerMessageId": pmid, "destination": "+393331112233"}


def delivered(pmid: str, provider: str = "twilio") -> dict[str, Any]:
    """A ``message.status`` DELIVERED receipt identified by provider identity."""
    return {"type": "message.status", "id": f"st-{provider}-{pmid}-delivered", "occurredAt": now_iso(),
            "status": "DELIVERED", "provider": provider, "providerMessageId": pmid, "rawStatus": "delivered"}


def canonical_target(base_url: str, events: list[dict[str, Any]] | dict[str, Any]) -> Target:
    """``POST /ingest/v1/events`` with Standard Webhooks headers signed now."""
    body = orjson.dumps(events)
    msg_id = "msg_" + secrets.token_hex(12)
    ts = int(time.time())
    return Target(url=f"{base_url}/ingest/v1/events", body=body, headers={
        "Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
        "webhook-signature": sign(_INGEST_KEY, msg_id, ts, body)})


_INGEST_KEY = secret_key(INGEST_SECRET)


def canonical_single(base_url: str, account_id: str) -> Iterator[Target]:
    """Endless single-event canonical requests, each a fresh message."""
    while True:
        mid = unique("m")
        yield canonical_target(base_url, submitted(account_id, mid, "SM" + mid))


def canonical_batch(base_url: str, account_id: str, size: int = 100) -> Iterator[Target]:
    """Endless canonical requests of ``size`` events (a JSON array)."""
    while True:
        batch = []
        for _ in range(size):
            mid = unique("m")
            batch.append(submitted(account_id, mid, "SM" + mid))
        yield canonical_target(base_url, batch)


def twilio_signature(url: str, form: list[tuple[str, str]], token: str = TWILIO_TOKEN) -> str:
    """Twilio's ``X-Twilio-Signature``: URL, then each parameter name (sorted) followed by its sorted values."""
    signed = url
    for name in sorted({n for n, _ in form}):
        for value in sorted({v for n, v in form if n == name}):
            signed += name + value
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def twilio_target(base_url: str, sid: str, status: str = "delivered", query: str = "") -> Target:
    """A Twilio status callback for ``sid``; ``query`` (e.g. ``n=7``) becomes part of the signed URL."""
    url = f"{base_url}/ingest/v1/providers/twilio" + (f"?{query}" if query else "")
    form = [("AccountSid", "ACbench"), ("MessageSid", sid), ("MessageStatus", status),
            ("From", "+15550001111"), ("To", "+393331112233"), ("ApiVersion", "2010-04-01")]
    return Target(url=url, body=urlencode(form).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": twilio_signature(url, form)})


def twilio_stream(base_url: str) -> Iterator[Target]:
    """Endless Twilio receipts, each for a different message (orphans: no submission precedes them)."""
    while True:
        yield twilio_target(base_url, "SM" + unique("t"))


def whatsapp_target(base_url: str, statuses: int = 10) -> Target:
    """A WhatsApp Cloud API webhook with ``statuses`` delivery statuses, ``X-Hub-Signature-256``-signed."""
    ts = str(int(time.time()))
    items = [{"id": "wamid." + unique("w"), "status": "delivered", "timestamp": ts, "recipient_id": "393331112233"}
             for _ in range(statuses)]
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
                                       "metadata": {"display_phone_number": "15550001111",
                                                    "phone_number_id": "106540352242922"},
                                       "statuses": items}}]}]})
    sig = "sha256=" + hmac.new(WHATSAPP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return Target(url=f"{base_url}/ingest/v1/providers/whatsapp", body=body,
                  headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig})


def whatsapp_stream(base_url: str) -> Iterator[Target]:
    """Endless WhatsApp webhooks of 10 statuses each."""
    while True:
        yield whatsapp_target(base_url)


def kafka_record(event: dict[str, Any], via: str = "bench") -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of an event as the ingress would produce it to ``qlara.delivery-events``."""
    if event.get("provider") and event.get("providerMessageId"):
        key = f"{event['provider']}:{event['providerMessageId']}"
    else:
        key = f"id:{event['messageId']}"
    headers = [("qlara-via", via.encode()), ("qlara-received-at", dt.datetime.now(dt.UTC).isoformat().encode())]
    return key.encode(), orjson.dumps(event), headers


def take(it: Iterator[Target], n: int) -> Iterator[Target]:
    """The next ``n`` targets of an endless stream."""
    for _ in range(n):
        yield next(it)
