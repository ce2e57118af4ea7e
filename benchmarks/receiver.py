"""Partner receivers for end_to_end and fanout, in a process of their own so they never limit the figure.

``python -m benchmarks.receiver --port N`` serves, on 127.0.0.1:N, a minimal HTTP/1.1 keep-alive server
written on an asyncio protocol (a fraction of aiohttp's cost per request): ``POST /ok/{name}`` records the
first arrival time of each ``messageId`` and answers 204; ``POST /hang/{name}`` never answers (the
dispatcher's timeout ends it). Signatures are not checked on the hot path: every request's headers and
body are kept and all of them are verified with the reference rule when the run asks (``GET /_verify``).
Control routes (``/_add``, ``/_counts``, ``/_arrivals``, ``/_verify``) are JSON.

:class:`Receiver` is the bench-side handle: it starts the process, registers secrets, waits for counts and
fetches arrivals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from qlara_events.errors import Unauthorized
from qlara_events.standard_webhooks import secret_key, verify

ROOT = Path(__file__).resolve().parent.parent


class _State:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.arrivals: dict[str, dict[str, float]] = {}
        self.kept: list[tuple[str, dict[str, str], bytes]] = []
        self.duplicates = 0
        self.hung = 0
        self.count = 0


def _handle_control(state: _State, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    if path == "/_add" and method == "POST":
        d = orjson.loads(body)
        state.keys[d["name"]] = secret_key(d["secret"])
        state.arrivals.setdefault(d["name"], {})
        return 200, b"{}"
    if path == "/_counts":
        return 200, orjson.dumps({"counts": {n: len(a) for n, a in state.arrivals.items()}, "hung": state.hung,
                                  "duplicates": state.duplicates, "requests": state.count})
    if path.startswith("/_arrivals/"):
        return 200, orjson.dumps(state.arrivals.get(path.rsplit("/", 1)[1], {}))
    if path == "/_verify":
        bad = 0
        for name, headers, raw in state.kept:
            try:
                verify(state.keys[name], headers, raw, time.time(), tolerance_s=3600)
            except (Unauthorized, KeyError):
                bad += 1
        return 200, orjson.dumps({"verified": len(state.kept) - bad, "bad_signatures": bad})
    return 404, b"{}"


class _Http(asyncio.Protocol):
    """HTTP/1.1 with Content-Length bodies and keep-alive: all a webhook sender needs."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.hanging = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.hanging:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            method, path, _ = head[0].split(" ", 2)
            self._request(method, path, headers, body)

    def _request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        st = self.state
        if path.startswith("/ok/"):
            at = time.time()
            name = path[4:]
            mid = orjson.loads(body).get("messageId", "")
            seen = st.arrivals.setdefault(name, {})
            if mid in seen:
                st.duplicates += 1
            else:
                seen[mid] = at
            st.count += 1
            st.kept.append((name, {k: v for k, v in headers.items() if k.startswith("webhook-")}, body))
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        if path.startswith("/hang/"):
            st.hung += 1
            self.hanging = True  # never answered; the sender times out and closes the connection
            return
        status, out = _handle_control(st, method, path, body)
        self.transport.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, len(out)) + out)


async def _serve(port: int) -> None:
    state = _State()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(state), "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    stop = asyncio.Event()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


class Receiver:
    """The bench's handle on a receiver process."""

    def __init__(self) -> None:
        self.arrivals: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}
        self.duplicates = 0
        self.bad_signatures = 0
        self.verified = 0
        self.hung = 0
        self.pid = 0
        self._base = ""
        self._http: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> Any:
        assert self._http is not None
        async with self._http.get(self._base + path) as r:
            return orjson.loads(await r.read())

    async def add(self, name: str, secret: str) -> None:
        """Expect webhooks for ``name`` signed with ``secret``."""
        assert self._http is not None
        async with self._http.post(self._base + "/_add", data=orjson.dumps({"name": name, "secret": secret})) as r:
            r.raise_for_status()
        self.arrivals.setdefault(name, {})

    async def refresh(self) -> None:
        """Counts, hung requests and duplicates so far."""
        d = await self._get("/_counts")
        self.counts = d["counts"]
        self.hung = d["hung"]
        self.duplicates = d["duplicates"]

    async def fetch(self, name: str) -> dict[str, float]:
        """messageId -> first arrival (wall clock) for ``name``; also kept in :attr:`arrivals`."""
        self.arrivals[name] = await self._get(f"/_arrivals/{name}")
        return self.arrivals[name]

    async def verify_all(self) -> None:
        """Verify every request received so far (Standard Webhooks rule, 1 h tolerance)."""
        d = await self._get("/_verify")
        self.verified, self.bad_signatures = d["verified"], d["bad_signatures"]

    async def wait_count(self, name: str, count: int, within_s: float) -> bool:
        """Poll until ``count`` distinct messages reached ``name``; False on timeout."""
        deadline = time.monotonic() + within_s
        while True:
            await self.refresh()
            if self.counts.get(name, 0) >= count:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[str]:
        """Start the receiver process on 127.0.0.1:port; yield the base URL."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.receiver", "--port", str(port), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.pid = proc.pid
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.strip() != b"ready":
                raise RuntimeError("receiver process did not start")
            self._base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                self._http = http
                yield self._base
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(ap.parse_args().port))
