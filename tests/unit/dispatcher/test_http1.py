"""The webhook HTTP/1.1 client against raw servers on loopback: framing, keep-alive, limits, the SSRF check."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import yarl

from qlara_events.dispatcher.http1 import Http1Pool, HttpError
from qlara_events.dispatcher.ssrf import ForbiddenDestination

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Server:
    """Answers each request with ``reply(request_bytes)``; counts connections and requests."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.reply(head + body)
                if out is None:
                    writer.close()
                    return
                writer.write(out)
                await writer.drain()
                if out.startswith(b"HTTP/1.0") or b"Connection: close" in out:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[Callable[[bytes], bytes | None]], asyncio.Future[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Callable[[bytes], bytes | None]) -> Server:
        s = Server(reply)
        srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        s.port = srv.sockets[0].getsockname()[1]
        servers.append(srv)
        return s

    yield start  # type: ignore[misc]
    for srv in servers:
        srv.close()


def pool(allowed=LOOPBACK, limit: int = 100) -> Http1Pool:
    return Http1Pool(allowed=allowed, read_limit=limit, user_agent="test/1")


def url(s: Server, path: str = "/hook") -> yarl.URL:
    return yarl.URL(f"http://127.0.0.1:{s.port}{path}")


OK = b"HTTP/1.1 204 No Content\r\n\r\n"


class TestFraming:
    """Status and Retry-After come back whatever the body's framing; the connection is reused when it can be."""

    async def test_request_bytes_and_keep_alive(self, serve) -> None:
        """One POST carries Host, User-Agent, Content-Length and our headers; the next reuses the connection."""
        s = await serve(lambda _: OK)
        p = pool()
        a = await p.post(url(s, "/h?x=1"), [("webhook-id", "msg_1")], b'{"a":1}')
        b = await p.post(url(s), [], b"{}")
        assert (a.status, b.status) == (204, 204)
        assert s.connections == 1
        first = s.requests[0]
        assert first.startswith(b"POST /h?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{s.port}\r\n".encode() in first and b"User-Agent: test/1\r\n" in first
        assert b"webhook-id: msg_1\r\n" in first and first.endswith(b'\r\n\r\n{"a":1}')
        p.close()

    @pytest.mark.parametrize("answer", [
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 5\r\n\r\nslow!",
        b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
    ])
    async def test_framings(self, serve, answer) -> None:
        """Content-Length, chunked and an interim 100 all give the final status; the connection is reused."""
        s = await serve(lambda _: answer)
        p = pool()
        for _ in range(2):
            got = await p.post(url(s), [], b"{}")
            assert (got.status, got.retry_after) == (429, "7")
        assert s.connections == 1
        p.close()

    @pytest.mark.parametrize("answer", [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody until the close",
    ])
    async def test_closing_answers(self, serve, answer) -> None:
        """`Connection: close` and a body delimited by the close are read; the next request connects anew."""
        s = await serve(lambda _: answer)
        p = pool()
        for _ in range(2):
            assert (await asyncio.wait_for(p.post(url(s), [], b"{}"), 5)).status == 200
        assert s.connections == 2
        p.close()

    async def test_long_body_is_not_drained(self, serve) -> None:
        """A body past the read limit closes the connection instead of being read to its end."""
        s = await serve(lambda _: b"HTTP/1.1 500 Boom\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)
        p = pool(limit=100)
        assert (await p.post(url(s), [], b"{}")).status == 500
        assert (await p.post(url(s), [], b"{}")).status == 500
        assert s.connections == 2
        p.close()


class TestFailures:
    """Resets and stale connections; what the SSRF guard refuses."""

    async def test_reset_before_answer(self, serve) -> None:
        """A server that closes a new connection without answering is an HttpError."""
        s = await serve(lambda _: None)
        p = pool()
        with pytest.raises(HttpError):
            await p.post(url(s), [], b"{}")
        p.close()

    async def test_stale_idle_connection_is_replaced(self, serve) -> None:
        """An idle connection the server closed meanwhile is replaced, the request sent once on the new one."""
        s = await serve(lambda _: OK)
        p = pool()
        assert (await p.post(url(s), [], b"{}")).status == 204
        s.writers[0].close()
        assert (await p.post(url(s), [], b"{}")).status == 204
        assert s.connections == 2 and len(s.requests) == 2
        p.close()

    async def test_loopback_refused_without_allow_list(self, serve) -> None:
        """With no allow-list a loopback destination is refused before any connection is made."""
        s = await serve(lambda _: OK)
        p = pool(allowed=())
        with pytest.raises(ForbiddenDestination):
            await p.post(url(s), [], b"{}")
        with pytest.raises(ForbiddenDestination):
            await p.post(yarl.URL(f"http://localhost:{s.port}/x"), [], b"{}")
        assert s.connections == 0
        p.close()


class TestUvloop:
    """The client runs on uvloop too (QLARA_UVLOOP), whose transports are not asyncio.Transport subclasses."""

    def test_exchange_on_uvloop(self) -> None:
        """A POST and a reuse of its connection on a uvloop event loop."""
        uvloop = pytest.importorskip("uvloop")

        async def scenario() -> tuple[int, int, int]:
            s = Server(lambda _: OK)
            srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
            s.port = srv.sockets[0].getsockname()[1]
            p = pool()
            try:
                a = await p.post(url(s), [], b"{}")
                b = await p.post(url(s), [], b"{}")
                return a.status, b.status, s.connections
            finally:
                p.close()
                for w in s.writers:
                    w.close()
                    await w.wait_closed()
                srv.close()
                await srv.wait_closed()

        loop = uvloop.new_event_loop()
        try:
            assert loop.run_until_complete(scenario()) == (204, 204, 1)
        finally:
            loop.close()
