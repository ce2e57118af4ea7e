"""Ingress admission control: a cap on requests in flight per process, and requests whose client left.

Requests are held in flight honestly: a raw connection sends a signed request's headers and a first byte of
its body, then nothing, so the view has started and waits on the body. For a request held in its publish,
the delivery topic does not exist yet (the broker does not create topics on demand): the producer waits for
Kafka's metadata to name it, up to the produce timeout, until the test creates it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from qlara_events.ingress.app import ADMISSION, Admission
from qlara_events.kafka import delete_topics, ensure_topics

from support.live import LiveServer, post_events, read_topic, serve, sign_canonical, submitted, wait_until
from support.settings import make_settings


def _gate(server: LiveServer) -> Admission:
    assert server.app is not None
    return server.app[ADMISSION]


async def in_flight(server: LiveServer, n: int) -> None:
    """Wait until the server's ingress is working on exactly ``n`` requests."""
    gate = _gate(server)

    async def probe() -> bool:
        return gate.in_flight == n

    await wait_until(probe, timeout=10, what=f"{n} ingest requests in flight (now {gate.in_flight})")


def counter(name: str, **labels: str) -> float:
    """A counter's value in this process's registry (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class HeldRequest:
    """A signed canonical request over a raw connection, its body sent only up to ``sent`` bytes."""

    def __init__(self, server: LiveServer, account_id: str = "acct-admission") -> None:
        self.event = submitted(account_id)
        self.body = orjson.dumps(self.event)
        self._server = server
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, sent: int = 1) -> HeldRequest:
        """Connect and send the headers and the first ``sent`` bytes of the body."""
        host, port = self._server.url.removeprefix("http://").split(":")
        self._reader, self._writer = await asyncio.open_connection(host, int(port))
        headers = sign_canonical(self._server.settings, self.body)
        head = ["POST /ingest/v1/events HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(self.body)}",
                *(f"{k}: {v}" for k, v in headers.items())]
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + self.body[:sent])
        await self._writer.drain()
        self._sent = sent
        return self

    async def send_rest(self) -> None:
        """Send the rest of the body (the view can then verify and publish it)."""
        assert self._writer is not None
        self._writer.write(self.body[self._sent:])
        await self._writer.drain()

    async def finish(self) -> tuple[int, dict[str, str], bytes]:
        """Send the rest of the body and read the answer."""
        await self.send_rest()
        return await self.answer()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Read the response: status, headers (lower-case names), body."""
        assert self._reader is not None
        status = int((await asyncio.wait_for(self._reader.readline(), 15)).split()[1])
        headers: dict[str, str] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def abort(self) -> None:
        """Drop the connection (RST), as a client that gives up does (again: nothing)."""
        assert self._writer is not None
        if not self._writer.transport.is_closing():
            self._writer.transport.abort()
        self._writer.close()


Hold = Callable[..., Awaitable[HeldRequest]]


@pytest_asyncio.fixture
async def hold() -> AsyncIterator[Hold]:
    """Start held requests (``await hold(server, sent=1)``); whatever is still open is dropped at the end."""
    opened: list[HeldRequest] = []

    async def start(server: LiveServer, sent: int = 1) -> HeldRequest:
        opened.append(await HeldRequest(server).start(sent))
        return opened[-1]

    yield start
    for h in opened:
        h.abort()


@pytest_asyncio.fixture
async def capped(infra: tuple[str, str]) -> AsyncIterator[LiveServer]:
    """An ingress of its own that admits two requests at a time."""
    settings = make_settings(*infra, QLARA_INGEST_MAX_IN_FLIGHT="2")
    await ensure_topics(settings)
    try:
        async with serve(settings, ("ingress",)) as live:
            yield live
    finally:
        await delete_topics(settings.kafka_bootstrap, settings.topics.prefix)


class TestInFlightCap:
    """QLARA_INGEST_MAX_IN_FLIGHT: past it the ingress answers 503 at once, and admits again when slots free."""

    async def test_past_the_cap_answered_503_before_its_body_is_read(self, capped: LiveServer, hold: Hold) -> None:
        """With two uploads held, a third request gets 503 + Retry-After + the JSON error body with its own body unsent."""
        for _ in range(2):
            await hold(capped)
        await in_flight(capped, 2)
        before = counter("qlara_ingest_overloaded_total", provider="canonical")

        refused = await hold(capped, sent=0)
        status, headers, body = await refused.answer()

        assert status == 503
        assert headers["retry-after"] == "1"
        assert headers["content-type"].startswith("application/json")
        error = orjson.loads(body)
        assert error["status"] == 503 and error["error"] == "Service Unavailable"
        assert "limit of 2 requests in flight" in error["message"] and error["retryAfter"] == 1
        assert counter("qlara_ingest_overloaded_total", provider="canonical") == before + 1
        assert _gate(capped).in_flight == 2

    async def test_accepts_again_once_held_requests_finish_or_abort(self, capped: LiveServer, hold: Hold,
                                                                    http: aiohttp.ClientSession) -> None:
        """One held request completes (202), the other is dropped, and then a new request is accepted."""
        finishing, dropped = [await hold(capped) for _ in range(2)]
        await in_flight(capped, 2)
        refused = await post_events(http, capped, submitted("acct-admission"))
        assert refused.status == 503

        status, _, body = await finishing.finish()
        assert status == 202 and orjson.loads(body) == {"accepted": 1}
        dropped.abort()
        await in_flight(capped, 0)

        accepted = await post_events(http, capped, submitted("acct-admission"))
        assert accepted.status == 202

    async def test_provider_callbacks_share_the_cap(self, capped: LiveServer, hold: Hold,
                                                  http: aiohttp.ClientSession) -> None:
        """A provider callback past the cap is refused the same way and counted under its provider."""
        for _ in range(2):
            await hold(capped)
        await in_flight(capped, 2)
        before = counter("qlara_ingest_overloaded_total", provider="twilio")
        async with http.post(f"{capped.url}/ingest/v1/providers/twilio", data={"MessageSid": "SM1"}) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert (await r.json())["status"] == 503
        assert counter("qlara_ingest_overloaded_total", provider="twilio") == before + 1

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
    async def test_operational_endpoints_are_not_capped(self, capped: LiveServer, hold: Hold,
                                                        http: aiohttp.ClientSession, path: str) -> None:
        """Liveness, readiness and metrics still answer 200 while every ingest slot is taken."""
        for _ in range(2):
            await hold(capped)
        await in_flight(capped, 2)
        async with http.get(f"{capped.url}{path}") as r:
            assert r.status == 200


class TestClientGone:
    """A request whose client disconnected stops being worked on and frees its slot."""

    async def test_disconnect_mid_upload_frees_the_slot(self, infra: tuple[str, str], hold: Hold,
                                                        http: aiohttp.ClientSession) -> None:
        """With a cap of one, a client that drops its connection mid-body lets the next request in (202)."""
        settings = make_settings(*infra, QLARA_INGEST_MAX_IN_FLIGHT="1")
        await ensure_topics(settings)
        try:
            async with serve(settings, ("ingress",)) as live:
                held = await hold(live)
                await in_flight(live, 1)
                assert (await post_events(http, live, submitted("acct-admission"))).status == 503
                before = counter("qlara_ingest_requests_total", provider="canonical", outcome="abandoned")

                held.abort()
                await in_flight(live, 0)

                assert counter("qlara_ingest_requests_total", provider="canonical",
                               outcome="abandoned") == before + 1
                assert (await post_events(http, live, submitted("acct-admission"))).status == 202
        finally:
            await delete_topics(settings.kafka_bootstrap, settings.topics.prefix)

    async def test_disconnect_while_kafka_has_not_acknowledged_frees_the_slot(
            self, infra: tuple[str, str], hold: Hold, http: aiohttp.ClientSession) -> None:
        """A client that leaves while its publish waits on Kafka frees its slot long before the produce timeout,
        and the producer still works afterwards."""
        settings = make_settings(*infra, QLARA_INGEST_MAX_IN_FLIGHT="1", QLARA_INGEST_PRODUCE_TIMEOUT="60")
        delivery = settings.topics.delivery_events
        await ensure_topics(settings, [t for t in settings.topics.all() if t != delivery])
        try:
            async with serve(settings, ("ingress",)) as live:
                held = await hold(live)
                await held.send_rest()
                await in_flight(live, 1)
                # The whole body is there and signed: the view is past reading, in its publish, which waits
                # (up to 60 s) for Kafka to know the delivery topic.
                assert (await post_events(http, live, submitted("acct-admission"))).status == 503

                held.abort()
                await in_flight(live, 0)  # within in_flight's 10 s, where the publish would have waited 60 s

                await ensure_topics(settings)
                fresh = submitted("acct-admission")
                assert (await post_events(http, live, fresh)).status == 202
                got = await read_topic(settings, delivery, lambda v: v["id"] == fresh["id"])
                assert [v["id"] for v in got] == [fresh["id"]]
        finally:
            await delete_topics(settings.kafka_bootstrap, settings.topics.prefix)
