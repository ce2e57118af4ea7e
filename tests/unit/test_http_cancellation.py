"""What a client's disconnect does to its request: only views marked cancel_on_disconnect stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp import web
from prometheus_client import REGISTRY

from qlara_events.http import base_app, cancel_on_disconnect
from qlara_events.server import HANDLER_CANCELLATION

from support.live import wait_until


class Probe:
    """Two slow views, one marked cancellable, and what became of each."""

    def __init__(self) -> None:
        self.started = {"plain": asyncio.Event(), "marked": asyncio.Event()}
        self.ended = {"plain": asyncio.Event(), "marked": asyncio.Event()}
        self.release = asyncio.Event()
        self.outcome: dict[str, str] = {}

    def view(self, name: str) -> web.RequestHandler:
        async def slow(request: web.Request) -> web.Response:
            self.started[name].set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.outcome[name] = "cancelled"
                raise
            else:
                self.outcome[name] = "finished"
            finally:
                self.ended[name].set()
            return web.Response(text="done")
        return slow


@pytest_asyncio.fixture
async def probe() -> AsyncIterator[tuple[Probe, int]]:
    p = Probe()
    app = base_app("cancellation-test")
    app.router.add_get("/plain", p.view("plain"))
    app.router.add_get("/marked", cancel_on_disconnect(p.view("marked")))
    runner = web.AppRunner(app, handler_cancellation=HANDLER_CANCELLATION)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield p, port
    finally:
        p.release.set()
        await runner.cleanup()


async def _leave(port: int, path: str, started: asyncio.Event) -> None:
    """Send a GET, wait until its view runs, then drop the connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await asyncio.wait_for(started.wait(), 10)
    writer.transport.abort()
    writer.close()


def gone(route: str) -> float:
    """Requests to ``route`` recorded as abandoned by their client (status 499)."""
    return REGISTRY.get_sample_value("qlara_http_requests_total",
                                     {"role": "cancellation-test", "route": route, "code": "499"}) or 0.0


class TestDisconnect:
    """The server's handler cancellation, per view."""

    async def test_marked_view_is_cancelled(self, probe: tuple[Probe, int]) -> None:
        """A view marked cancel_on_disconnect gets CancelledError when its client drops the connection."""
        p, port = probe
        before = gone("/marked")
        await _leave(port, "/marked", p.started["marked"])

        await asyncio.wait_for(p.ended["marked"].wait(), 10)
        assert p.outcome["marked"] == "cancelled"
        assert gone("/marked") == before + 1

    async def test_other_views_run_to_their_end(self, probe: tuple[Probe, int]) -> None:
        """Any other view keeps running after its client left, and finishes once its work is done."""
        p, port = probe
        before = gone("/plain")
        await _leave(port, "/plain", p.started["plain"])

        async def noticed() -> bool:
            return gone("/plain") == before + 1

        await wait_until(noticed, timeout=10, what="the server to record the disconnect (499)")
        assert not p.ended["plain"].is_set()
        p.release.set()
        await asyncio.wait_for(p.ended["plain"].wait(), 10)
        assert p.outcome["plain"] == "finished"
