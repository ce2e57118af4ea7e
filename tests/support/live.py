"""A live server, signed requests, event builders and awaiting helpers for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from qlara_events.config import Settings
from qlara_events.standard_webhooks import secret_key, signature_header

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class LiveServer:
    """A running server: its base URL and the settings it was built with."""

    url: str
    settings: Settings
    #: The application, for tests that look at in-process state (None for a server in another process).
    app: web.Application | None = None


@contextlib.asynccontextmanager
async def serve(settings: Settings, roles: Sequence[str]) -> AsyncIterator[LiveServer]:
    """Run ``roles`` in this process on a free loopback port."""
    from qlara_events.server import HANDLER_CANCELLATION, MAX_LINE_SIZE, build_app

    app = build_app(settings, roles)
    runner = web.AppRunner(app, shutdown_timeout=5, handler_cancellation=HANDLER_CANCELLATION,
                           max_line_size=MAX_LINE_SIZE)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # -- started site has a server
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", settings, app)
    finally:
        await runner.cleanup()


@dataclasses.dataclass(frozen=True)
class Account:
    """A test account and its API key."""

    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


def uid(prefix: str = "") -> str:
    """A unique id, so tests never see each other's data."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def now_iso(offset_s: float = 0.0) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


def submitted(account_id: str, *, message_id: str | None = None, customer_id: str | None = None,
              provider: str = "twilio", provider_message_id: str | None = None, channel: str = "SMS",
              parts: int = 1, part_ids: list[str] | None = None, destination: str = "+393331112233") -> dict[str, Any]:
    """A ``message.submitted`` canonical event."""
    ev: dict[str, Any] = {
        "type": "message.submitted", "id": uid("sub-"), "occurredAt": now_iso(), "accountId": account_id,
        "channel": channel, "messageId": message_id or str(uuid.uuid4()),
        "customerMessageId": customer_id or uid("cust-"), "provider": provider,
        "providerMessageId": provider_message_id or uid("pm-"), "destination": destination, "parts": parts,
    }
    if part_ids:
        ev["partProviderMessageIds"] = part_ids
    return ev


def status(status: str, *, message_id: str | None = None, provider: str | None = None,
           provider_message_id: str | None = None, part: int | None = None, event_id: str | None = None,
           **extra: Any) -> dict[str, Any]:
    """A ``message.status`` canonical event."""
    ev: dict[str, Any] = {"type": "message.status", "id": event_id or uid("st-"), "occurredAt": now_iso(),
                          "status": status, **extra}
    if message_id:
        ev["messageId"] = message_id
    if provider:
        ev["provider"] = provider
        ev["providerMessageId"] = provider_message_id
    if part is not None:
        ev["part"] = part
    return ev


def sign_canonical(settings: Settings, body: bytes, *, msg_id: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers for a canonical ingest request."""
    assert settings.ingest_secret
    msg_id = msg_id or uid("msg_")
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([secret_key(settings.ingest_secret)], msg_id, ts, body),
        "Content-Type": "application/json",
    }


async def post_events(http: aiohttp.ClientSession, server: LiveServer, events: list[dict[str, Any]] | dict[str, Any]) -> aiohttp.ClientResponse:
    """POST canonical events, signed; returns the (read) response."""
    body = orjson.dumps(events)
    async with http.post(f"{server.url}/ingest/v1/events", data=body,
                         headers=sign_canonical(server.settings, body)) as resp:
        await resp.read()
        return resp


async def wait_until(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0,
                     what: str = "condition") -> T:
    """Await until ``probe`` returns something truthy (the awaited event), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


async def read_topic_to_end(settings: Settings, topic: str, match: Callable[[dict[str, Any]], bool], *,
                            timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its end offsets as of this call whose JSON value matches.

    Unlike :func:`read_topic` it does not stop at the first match, so it can show a record is absent.
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        # Without a group every partition of the topic is assigned once its metadata arrived.
        partitions = await wait_until(lambda: _assigned(consumer), timeout=timeout, what=f"{topic}'s partitions")
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s reading {topic} to its end offsets {ends}")
            batch = await consumer.getmany(*partitions, timeout_ms=200)
            for tp, recs in batch.items():
                for r in recs:
                    try:
                        value = orjson.loads(r.value)
                    except orjson.JSONDecodeError:  # poison records other tests produce match nothing
                        continue
                    if r.offset < ends[tp] and isinstance(value, dict) and match(value):
                        found.append(value)
    finally:
        await consumer.stop()
    return found


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topic`` now."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await wait_until(lambda: _assigned(consumer), what=f"{topic}'s partitions")
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def wait_projected(settings: Settings, *, timeout: float = 30.0) -> None:
    """Await until the projector group committed every delivery event published before this call.

    The projector commits a batch's offsets only after its transaction, so everything published so far is
    in Postgres afterwards (whichever partition its key chose).
    """
    ends = await end_offsets(settings, settings.topics.delivery_events)

    async def caught_up() -> bool:
        committed = await committed_offsets(settings, settings.consumer_group_projector)
        return all(end == 0 or committed.get(tp, -1) >= end for tp, end in ends.items())

    await wait_until(caught_up, timeout=timeout, what=f"the projector to commit up to {ends}")


async def committed_offsets(settings: Settings, group: str) -> dict[TopicPartition, int]:
    """The offsets ``group`` has committed, by partition (partitions it never committed are absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        return {tp: int(meta.offset) for tp, meta in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()


async def _assigned(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    return sorted(consumer.assignment())


async def read_topic(settings: Settings, topic: str, match: Callable[[dict[str, Any]], bool], *,
                     count: int = 1, timeout: float = 30.0, unique_by: str | None = None) -> list[dict[str, Any]]:
    """Records of ``topic`` (from the beginning) whose JSON value matches, until ``count`` are found.

    With ``unique_by``, ``count`` counts distinct values of that field (duplicates are still returned).
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        def enough() -> bool:
            n = len({v[unique_by] for v in found}) if unique_by else len(found)
            return n >= count

        while not enough() and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                for r in recs:
                    value = orjson.loads(r.value)
                    if match(value):
                        found.append(value)
    finally:
        await consumer.stop()
    return found
