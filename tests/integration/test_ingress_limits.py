"""Unauthenticated provider requests cost the ingress little: each provider's body limit is enforced before
and while reading, a form has a field cap checked before it is parsed, and Twilio's signature work is done
once per request, not once per URL variant.

The attack runs against an ingress process of its own, so the probe measuring ``/healthz`` is not on the
event loop under attack.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import pytest_asyncio

from benchmarks.common import Service

from support.isolated import api_process

pytestmark = pytest.mark.slow

TOKEN = "ingress-limits-twilio-token"
FORM = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "forged"}
#: What the ingress accepted before per-provider limits: a valid 4 MiB form of about 1 M fields.
FLOOD = b"&".join([b"a=b"] * (4 * 1024 * 1024 // 4))


@pytest_asyncio.fixture(scope="module")
async def ingress(http: aiohttp.ClientSession, infra: tuple[str, str]) -> AsyncIterator[Service]:
    async with api_process(http, kafka=infra[0], database_url=infra[1], role="ingress",
                           extra_env={"QLARA_TWILIO_AUTH_TOKEN": TOKEN}) as service:
        yield service


def _url(ingress: Service, path: str) -> str:
    return f"http://127.0.0.1:{ingress.port}{path}"


async def _error(response: aiohttp.ClientResponse) -> str:
    body = orjson.loads(await response.read())
    assert isinstance(body, dict)
    return str(body)


class TestProviderBodyLimits:
    async def test_a_twilio_body_past_64_kib_is_413_before_it_is_sent(self, ingress: Service) -> None:
        """The declared length alone is refused: the answer arrives while the client has sent headers only."""
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        try:
            writer.write(b"POST /ingest/v1/providers/twilio HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: forged\r\n"
                         b"Content-Length: 4194304\r\n\r\n")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 30)
        finally:
            writer.close()
        assert status_line.split()[1] == b"413", status_line

    async def test_a_chunked_body_is_cut_at_the_limit(self, http: aiohttp.ClientSession, ingress: Service) -> None:
        """Without a Content-Length the body is read only up to the provider's limit, then 413."""

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(FLOOD), 256 * 1024):
                yield FLOOD[start:start + 256 * 1024]

        try:
            async with http.post(_url(ingress, "/ingest/v1/providers/twilio"), data=chunks(), headers=FORM) as r:
                assert r.status == 413
                assert "65536 bytes" in await _error(r)
        except aiohttp.ClientConnectionError:
            # The server answered and closed while the rest was still being sent: also a refusal unread,
            # but then the 413 must be in the server's counters.
            async with http.get(_url(ingress, "/metrics")) as m:
                assert 'provider="twilio",result="too_large"' in await m.text()

    async def test_whatsapp_keeps_its_documented_3_mb(self, http: aiohttp.ClientSession, ingress: Service) -> None:
        """A 3 MB WhatsApp body is read (and then judged on its signature: 401 or 404 if not enabled)."""
        body = b"{" + b" " * 3_000_000 + b"}"
        async with http.post(_url(ingress, "/ingest/v1/providers/whatsapp"), data=io.BytesIO(body),
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status in (401, 404), r.status


class TestFieldCap:
    async def test_a_field_flood_is_400_without_being_parsed(self, http: aiohttp.ClientSession,
                                                              ingress: Service) -> None:
        """20,000 empty fields in 60 KiB: refused by count (400 naming the cap), not parsed and then 401."""
        body = b"&".join([b"a="] * 20_000)
        async with http.post(_url(ingress, "/ingest/v1/providers/twilio"), data=body, headers=FORM) as r:
            assert r.status == 400
            assert "at most 256 fields" in await _error(r)


class TestHealthUnderAttack:
    async def test_healthz_stays_fast_while_forged_floods_arrive(self, http: aiohttp.ClientSession,
                                                                 ingress: Service) -> None:
        """Four clients post forged 4 MiB floods back to back while a probe reads ``/healthz``.

        Before the limits, each flood cost the ingress's event loop about half a second (parse, then the sort
        and join per URL variant) and the probe's median was hundreds of milliseconds. Now every flood is
        refused from its declared length: the median must stay under 100 ms (a wide margin on a loaded
        2-core machine, where an idle probe takes about 2 ms).
        """
        url = _url(ingress, "/ingest/v1/providers/twilio")
        deadline = time.monotonic() + 8
        floods = 0

        async def attacker() -> None:
            nonlocal floods
            while time.monotonic() < deadline and floods < 200:
                try:
                    async with http.post(url, data=io.BytesIO(FLOOD), headers=FORM) as r:
                        assert r.status in (400, 401, 413), r.status
                except aiohttp.ClientConnectionError:
                    pass  # refused and closed while the body was still being written
                floods += 1

        latencies: list[float] = []

        async def probe() -> None:
            await asyncio.sleep(0.5)  # let the floods start (pacing the probe, not synchronisation)
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http.get(_url(ingress, "/healthz")) as r:
                    assert r.status == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)

        await asyncio.gather(probe(), *(attacker() for _ in range(4)))
        assert len(latencies) >= 10, latencies
        assert statistics.median(latencies) < 0.1, (statistics.median(latencies), max(latencies), floods)
        assert floods >= 4, floods
