"""Real HTTP receivers on loopback that behave like partners: healthy, slow, failing, gone, hanging..."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import orjson
from aiohttp import web


@dataclasses.dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, object]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """Routes by behaviour: ``/{behaviour}/{token}``; every request is recorded per token."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Received]] = defaultdict(list)
        self.arrived = asyncio.Condition()
        self.url = ""
        self.hang_release = asyncio.Event()
        #: The connections of the ``hang`` requests, per token, to tell whether the client gave up on them.
        self.hanging: dict[str, list[asyncio.BaseTransport]] = defaultdict(list)

    def endpoint(self, behaviour: str, token: str) -> str:
        return f"{self.url}/{behaviour}/{token}"

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        async with self.arrived:
            self.requests[request.match_info["token"]].append(
                Received(request.path, dict(request.headers), body, time.monotonic()))
            self.arrived.notify_all()
        return body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        behaviour = request.match_info["behaviour"]
        body = await self._record(request)
        if behaviour == "ok":
            return web.Response(status=200, text="ok")
        if behaviour == "slow":
            await asyncio.sleep(1.0)
            return web.Response(status=200)
        if behaviour == "fail":
            return web.Response(status=500, text="boom")
        if behaviour == "gone":
            return web.Response(status=410)
        if behaviour == "busy":
            return web.Response(status=429, headers={"Retry-After": "2"})
        if behaviour == "redirect":
            raise web.HTTPFound(location=f"{self.url}/ok/{request.match_info['token']}-redirected")
        if behaviour == "hang":
            assert request.transport is not None
            self.hanging[request.match_info["token"]].append(request.transport)
            await self.hang_release.wait()
            return web.Response(status=200)
        if behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()  # RST instead of an answer
            return web.Response(status=200)
        if behaviour == "finalonly":  # asks to come back later for anything but a final delivery/read
            if orjson.loads(body).get("deliveryStatus") in ("DELIVERED", "READ"):
                return web.Response(status=200)
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=404)

    def hanging_closed(self, token: str) -> int:
        """How many of ``token``'s hanging requests the client has closed (timed out) so far."""
        return sum(t.is_closing() for t in self.hanging[token])

    async def wait_for(self, token: str, count: int, timeout: float = 30.0) -> list[Received]:
        """Await until ``count`` requests arrived for ``token``."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.requests[token]) >= count), timeout)
            return list(self.requests[token])


async def start_receiver() -> AsyncIterator[Receiver]:
    """Run a receiver on a free loopback port."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{behaviour}/{token}", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # -- started site has a server
    receiver.url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        receiver.hang_release.set()
        await runner.cleanup()
