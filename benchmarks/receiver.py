"""Partner receivers on loopback for end_to_end and fanout: healthy ones verify the Standard Webhooks
signature and note when each message's webhook arrived; a hanging one never answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from qlara_events.errors import Unauthorized
from qlara_events.standard_webhooks import secret_key, verify


class Receiver:
    """``POST /ok/{name}`` (verified, recorded) and ``POST /hang/{name}`` (never answers)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        #: name -> messageId -> wall-clock arrival of its first webhook.
        self.arrivals: dict[str, dict[str, float]] = {}
        self.duplicates = 0
        self.bad_signatures = 0
        self.hung = 0
        self.count = 0
        self.changed = asyncio.Event()
        self._release = asyncio.Event()

    def add(self, name: str, secret: str) -> None:
        """Expect webhooks for ``name`` signed with ``secret``."""
        self.keys[name] = secret_key(secret)
        self.arrivals[name] = {}

    async def ok(self, request: web.Request) -> web.Response:
        """Verify, record the first arrival per message, answer 204."""
        body = await request.read()
        at = time.time()
        name = request.match_info["name"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            verify(self.keys[name], headers, body, at)
        except (Unauthorized, KeyError):
            self.bad_signatures += 1
            return web.Response(status=400)
        mid = orjson.loads(body).get("messageId", "")
        seen = self.arrivals[name]
        if mid in seen:
            self.duplicates += 1
        else:
            seen[mid] = at
        self.count += 1
        self.changed.set()
        return web.Response(status=204)

    async def hang(self, request: web.Request) -> web.Response:
        """Hold the request until the receiver stops (the dispatcher's timeout ends it first)."""
        self.hung += 1
        await self._release.wait()
        return web.Response(status=204)

    async def wait_count(self, name: str, count: int, within_s: float) -> bool:
        """Await until ``count`` distinct messages reached ``name``; False on timeout."""
        deadline = time.monotonic() + within_s
        while len(self.arrivals[name]) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    @contextlib.asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[str]:
        """Serve on 127.0.0.1:port; yield the base URL."""
        app = web.Application()
        app.router.add_post("/ok/{name}", self.ok)
        app.router.add_post("/hang/{name}", self.hang)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self._release.set()
            await runner.cleanup()
