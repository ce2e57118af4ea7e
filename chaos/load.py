"""A steady, bounded load of signed canonical events, retried the way providers retry.

Each message is two events: ``message.submitted``, then (once that was acknowledged) ``DELIVERED``. Messages
start on a fixed schedule (open loop: a slow or absent ingress does not slow the schedule down). Every
event is POSTed, Standard Webhooks-signed, until it gets a 2xx; any other answer or a connection error is
retried with capped exponential backoff and jitter, bounded in attempts and in time. Half of the receipts
name the message (``messageId``) and half the provider identity, so both Kafka keys and the orphan path
(a receipt projected before its submission) are exercised.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson

from qlara_events.standard_webhooks import secret_key, signature_header


@dataclasses.dataclass
class Message:
    """One message of the load and when the ingress acknowledged its events (Unix time, comparable with the
    receiver's clock in another process)."""

    index: int
    message_id: str
    provider_message_id: str
    submitted_id: str
    delivered_id: str
    receipt_by_message_id: bool
    submitted_acked_at: float | None = None
    delivered_acked_at: float | None = None


@dataclasses.dataclass
class LoadStats:
    """What the generator saw."""

    requests: int = 0
    acknowledged: int = 0
    rejected: int = 0  # answered, but not 2xx
    connection_errors: int = 0
    gave_up: int = 0
    answers: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    last_failure_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class Load:
    """Drives ``events_per_s`` (two events per message) for ``duration_s`` against one ingress.

    Messages go in groups of ``per_request``: one request carries the group's submissions, and once it was
    acknowledged a second carries their receipts, as an upstream sender batching its callbacks would.
    """

    def __init__(self, *, url: str, secret: str, account_ids: Sequence[str], tag: str, events_per_s: float,
                 duration_s: float, per_request: int = 1, give_up_s: float = 120.0, max_attempts: int = 200,
                 on_delivered_ack: Callable[[Message], None] | None = None) -> None:
        self.url = f"{url}/ingest/v1/events"
        self.key = secret_key(secret)
        #: Message i belongs to account i mod n (each account has a webhook of its own).
        self.account_ids = list(account_ids)
        self.tag = tag
        self.messages_per_s = events_per_s / 2
        self.duration_s = duration_s
        self.per_request = per_request
        self.give_up_s = give_up_s
        self.max_attempts = max_attempts
        self.on_delivered_ack = on_delivered_ack
        self.messages: list[Message] = []
        self.stats = LoadStats()

    def _message(self, i: int) -> Message:
        return Message(index=i, message_id=str(uuid.uuid4()), provider_message_id=f"SM{self.tag}{i:07d}",
                       submitted_id=f"{self.tag}-{i}-sub", delivered_id=f"{self.tag}-{i}-dlv",
                       receipt_by_message_id=i % 2 == 0)

    def _submitted(self, m: Message) -> dict[str, Any]:
        return {"type": "message.submitted", "id": m.submitted_id, "occurredAt": _iso_now(),
                "accountId": self.account_ids[m.index % len(self.account_ids)], "channel": "SMS",
                "messageId": m.message_id,
                "customerMessageId": f"cust-{self.tag}-{m.index}", "provider": "twilio",
                "providerMessageId": m.provider_message_id, "destination": "+393331112233", "parts": 1}

    def _delivered(self, m: Message) -> dict[str, Any]:
        ev: dict[str, Any] = {"type": "message.status", "id": m.delivered_id, "occurredAt": _iso_now(),
                              "status": "DELIVERED"}
        if m.receipt_by_message_id:
            ev["messageId"] = m.message_id
        else:
            ev["provider"] = "twilio"
            ev["providerMessageId"] = m.provider_message_id
        return ev

    async def run(self) -> None:
        """Send the whole schedule and wait until every message was acknowledged or given up."""
        # No total timeout: a request may wait for a pooled connection as long as it must (queueing is not a
        # failure); only connecting and reading are bounded, as a provider's HTTP client would bound them.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout) as http:
            loop = asyncio.get_running_loop()
            start = loop.time()
            self.stats.started_at = time.time()
            total = int(self.messages_per_s * self.duration_s)
            tasks: set[asyncio.Task[None]] = set()
            for first in range(0, total, self.per_request):
                delay = start + first / self.messages_per_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                group = [self._message(i) for i in range(first, min(first + self.per_request, total))]
                self.messages += group
                task = asyncio.create_task(self._group(http, group))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            self.stats.finished_at = time.time()

    async def _group(self, http: aiohttp.ClientSession, group: list[Message]) -> None:
        at = await self._post(http, [self._submitted(m) for m in group])
        if at is None:
            return
        for m in group:
            m.submitted_acked_at = at
        at = await self._post(http, [self._delivered(m) for m in group])
        if at is None:
            return
        for m in group:
            m.delivered_acked_at = at
            if self.on_delivered_ack is not None:
                self.on_delivered_ack(m)

    async def _post(self, http: aiohttp.ClientSession, events: list[dict[str, Any]]) -> float | None:
        """POST until a 2xx (return its Unix time) or the bounds are reached (None)."""
        body = orjson.dumps(events if len(events) > 1 else events[0])
        msg_id = f"msg_{events[0]['id']}"  # a sender reuses its delivery id on every retry
        first = time.monotonic()
        backoff = 0.25
        for _ in range(self.max_attempts):
            ts = int(time.time())
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                       "webhook-signature": signature_header([self.key], msg_id, ts, body),
                       "Content-Type": "application/json"}
            self.stats.requests += 1
            try:
                async with http.post(self.url, data=body, headers=headers) as resp:
                    await resp.read()
                    self.stats.answers[resp.status] += 1
                    if 200 <= resp.status < 300:
                        self.stats.acknowledged += len(events)
                        return time.time()
                    self.stats.rejected += 1
            except (aiohttp.ClientError, TimeoutError):
                self.stats.connection_errors += 1
            self.stats.last_failure_at = time.time()
            if time.monotonic() - first + backoff > self.give_up_s:
                break
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # jitter spreads retries out
            backoff = min(backoff * 2, 2.0)
        self.stats.gave_up += len(events)
        return None
