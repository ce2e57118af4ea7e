"""A minimal HTTP/1.1 client for webhook POSTs: one write per request, a small response parser, keep-alive.

Why not aiohttp's client: a webhook attempt is one POST of bytes we already hold, and all we need back is
the status, ``Retry-After`` and at most a few KiB of body to drop. aiohttp's general-purpose request path
cost 420 µs of CPU per request on the development machine against 130 µs for this one (350 and 75 µs under
uvloop; `benchmarks/README.md`, "Dispatcher HTTP client"), and that was most of the dispatcher's CPU per
delivery.

What it keeps of the guarded aiohttp connector (``ssrf.py``): every **new connection** resolves the host afresh
(no DNS cache) through :func:`ssrf.resolve_checked`, which refuses the host if any answer is forbidden, and
connects to exactly the addresses it checked (DNS rebinding cannot redirect it; IP literals are checked the
same way). No proxy is ever used and redirects are not followed (the caller treats 3xx as a failure).
HTTPS verifies the certificate against the host name (the system's trust store).

Framing: ``Content-Length``, ``chunked`` or read-until-close. At most ``read_limit`` bytes of body are read;
a longer body closes the connection instead of being drained. Idle connections are reused per
(scheme, host, port) for ``IDLE_S``; a request that fails on a reused connection before any byte of the
answer arrived (the server had closed it meanwhile) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ssl
import time
from collections.abc import Sequence
from typing import Final, cast

import yarl

from qlara_events.dispatcher.ssrf import IPNetwork, resolve_checked

#: Seconds an idle connection is kept for reuse.
IDLE_S: Final = 10.0
#: Idle connections kept per (scheme, host, port).
IDLE_PER_KEY: Final = 32
_MAX_HEAD: Final = 64 * 1024


class HttpError(Exception):
    """The exchange failed: connection refused or reset, malformed answer (the message says which)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What the dispatcher needs of a response."""

    status: int
    retry_after: str | None


class _Conn(asyncio.Protocol):
    """One connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self.got_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got_bytes = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool | None:
        self.closed = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def more(self) -> bool:
        """Wait for more bytes; False when the peer closed (buffered bytes stay readable)."""
        if self.closed:
            return False
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter
        self.waiter = None
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive connections per origin; SSRF-checked connects."""

    def __init__(self, *, allowed: Sequence[IPNetwork], read_limit: int, user_agent: str) -> None:
        self._allowed = tuple(allowed)
        self._read_limit = read_limit
        self._ua = user_agent.encode()
        self._idle: dict[tuple[str, str, int], collections.deque[_Conn]] = {}
        self._ssl: ssl.SSLContext | None = None

    def close(self) -> None:
        """Close every idle connection."""
        for line in self._idle.values():
            for c in line:
                c.close()
        self._idle.clear()

    async def post(self, url: yarl.URL, headers: Sequence[tuple[str, str]], body: bytes) -> Answer:
        """POST ``body``; the caller bounds the whole call with a timeout (the connection is then dropped)."""
        scheme, host = url.scheme, url.raw_host or ""
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        default_port = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if default_port else f"[{host}]:{port}"
        head = [b"POST ", url.raw_path_qs.encode() or b"/", b" HTTP/1.1\r\nHost: ", host_header.encode(),
                b"\r\nUser-Agent: ", self._ua, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for k, v in headers:
            head += (k.encode(), b": ", v.encode("latin-1"), b"\r\n")
        request = b"".join([*head, b"\r\n", body])
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, request)
            except HttpError:
                if conn.got_bytes:
                    raise
                # The server closed the idle connection before our request reached it: a new connection.
        conn = await self._connect(scheme, host, port)
        return await self._exchange(key, conn, request)

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        line = self._idle.get(key)
        now = time.monotonic()
        while line:
            c = line.pop()
            if not c.closed and now - c.idle_since < IDLE_S and not c.buf:
                return c
            c.close()
        return None

    def _give_back(self, key: tuple[str, str, int], conn: _Conn) -> None:
        line = self._idle.setdefault(key, collections.deque())
        conn.idle_since = time.monotonic()
        conn.got_bytes = False
        line.append(conn)
        while len(line) > IDLE_PER_KEY:
            line.popleft().close()
        now = conn.idle_since
        while line and now - line[0].idle_since >= IDLE_S:
            line.popleft().close()

    async def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        results = await resolve_checked(host, port, allowed=self._allowed)  # raises ForbiddenDestination
        loop = asyncio.get_running_loop()
        ctx = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        last: OSError | None = None
        for r in results:
            try:
                _, conn = await loop.create_connection(
                    _Conn, r["host"], port, ssl=ctx, server_hostname=host if ctx else None, family=r["family"])
                return conn
            except OSError as exc:
                last = exc
        raise HttpError(f"cannot connect to {host}:{port}: {last}")

    async def _exchange(self, key: tuple[str, str, int], conn: _Conn, request: bytes) -> Answer:
        try:
            assert conn.transport is not None
            if conn.closed:
                raise HttpError("connection closed by the server")
            conn.transport.write(request)
            status, retry_after, keep = await self._read_answer(conn)
        except BaseException:
            conn.close()
            raise
        if keep and not conn.closed:
            self._give_back(key, conn)
        else:
            conn.close()
        return Answer(status, retry_after)

    async def _read_answer(self, conn: _Conn) -> tuple[int, str | None, bool]:
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            while end < 0:
                if len(conn.buf) > _MAX_HEAD:
                    raise HttpError("response headers too long")
                if not await conn.more():
                    raise HttpError(f"connection closed before an answer ({_why(conn)})")
                end = conn.buf.find(b"\r\n\r\n")
            lines = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
            del conn.buf[:end + 4]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                keep &= await self._skip_chunked(conn)
            elif "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError:
                    raise HttpError("malformed Content-Length") from None
                keep &= await self._skip(conn, length)
            elif status in (204, 304):
                pass
            else:  # delimited by close: read what comes (up to the limit), then the connection is done
                while len(conn.buf) <= self._read_limit and await conn.more():
                    pass
                conn.buf.clear()
                keep = False
            return status, headers.get("retry-after"), keep

    async def _skip(self, conn: _Conn, length: int) -> bool:
        """Drop ``length`` bytes of body; False (close the connection) if it is longer than the read limit."""
        if length > self._read_limit + 2:
            return False
        while len(conn.buf) < length:
            if not await conn.more():
                raise HttpError("connection closed in the middle of the body")
        del conn.buf[:length]
        return True

    async def _skip_chunked(self, conn: _Conn) -> bool:
        total = 0
        while True:
            try:
                size = int((await _line(conn, "a chunked body")).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError("malformed chunk size") from None
            total += size
            if total > self._read_limit:
                return False
            if size == 0:
                while await _line(conn, "the chunked trailer"):  # trailers (rare), then the blank line
                    pass
                return True
            if not await self._skip(conn, size + 2):
                return False


async def _line(conn: _Conn, where: str) -> bytes:
    """The next CRLF-terminated line of ``conn``'s buffer (without the CRLF), waiting for it if need be."""
    end = conn.buf.find(b"\r\n")
    while end < 0:
        if not await conn.more():
            raise HttpError(f"connection closed in the middle of {where}")
        end = conn.buf.find(b"\r\n")
    line = bytes(conn.buf[:end])
    del conn.buf[:end + 2]
    return line


def _why(conn: _Conn) -> str:
    return f"{type(conn.error).__name__}: {conn.error}" if conn.error else "the server closed the connection"
