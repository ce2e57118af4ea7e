"""API keys resolved from memory, by the SHA-256 digest of the key (the raw key is never held).

An entry is a key that authenticated: unknown and revoked keys are never cached, so creating a key needs no
invalidation. Every change that can make an entry wrong (a key revoked, deleted, its channels changed; its
account's plan changed or the account deleted) notifies the Postgres channel ``qlara_api_keys`` at commit
(migration 017's triggers, so every path is covered: the API, the CLI, plain SQL), and the entries named
are dropped. Postgres sends the notification at the revoking commit, before the revoking request is
answered; it reaches every listener within about one loopback hop, well before the revoking client can have
its answer and send another request, so the next request with the key, on any process, is a 401.

A notification can only be missed while the listener connection is down, so the cache serves nothing unless
that connection is confirmed healthy: ``select 1`` on it every ``check_s``, and an entry is served only while
the last such round trip began less than ``3 x check_s`` ago (Postgres delivers a listening session's pending
notifications before the answer to its next query, so a completed round trip proves that every notification
committed before it began has arrived) and the connection is not known to be closed. Otherwise every request
is looked up in Postgres, as without a cache. A new listener connection starts from an empty cache: whatever
was notified while there was none is forgotten with everything else. So a dropped connection that Postgres
or the kernel reports is noticed at once, and a silently dead one within ``3 x check_s``.
On top of that, a request is served from the cache only after a round trip on the listener connection that
began after the request arrived (:meth:`KeyCache.confirmed`; concurrent requests share one): a revocation
committed before the request has then been applied, and a listener whose backend died without the kernel
having told us yet fails that round trip, so the key is looked up. (Found by a fresh-clone run: a backend
terminated while the request raced its FIN served a key revoked in between.)
The listener pattern is dispatcher/endpoints.py's (listen first, then trust; reconnect with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Final

import asyncpg

from qlara_events.logs import get_logger
from qlara_events.store.accounts import Principal

log = get_logger("store.keycache")

CHANNEL: Final = "qlara_api_keys"
#: Entries at most; past it the older half is forgotten (those keys are simply looked up again).
MAX_ENTRIES: Final = 100_000
#: ``application_name`` of the listener connection (with the process id), so an operator can find it.
APPLICATION_NAME: Final = "qlara-key-listener"


class KeyCache:
    """Principals by key digest, trusted only while the ``qlara_api_keys`` listener is confirmed healthy."""

    def __init__(self, database_url: str, *, check_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._url = database_url
        self._check_s = check_s
        self._clock = clock
        self._entries: dict[bytes, Principal] = {}
        #: Bumped by every invalidation: a lookup that began before one must not store what it read.
        self._generation = 0
        self._conn: asyncpg.Connection | None = None
        self._trusted_until = 0.0
        self._stopping = asyncio.Event()
        #: Callers of :meth:`confirmed` waiting for the next round trip on the listener (one serves them all).
        self._waiters: list[asyncio.Future[bool]] = []
        self._wanted = asyncio.Event()
        self.reconnects = 0

    def healthy(self) -> bool:
        """Whether entries may be served now (the listener is connected and answered recently)."""
        conn = self._conn
        return conn is not None and not conn.is_closed() and self._clock() < self._trusted_until

    def get(self, digest: bytes) -> Principal | None:
        """The cached principal of a key digest, or None (unknown here, or the cache is not trusted now)."""
        if not self._entries or not self.healthy():
            return None
        return self._entries.get(digest)

    async def confirmed(self) -> bool:
        """True once a round trip on the listener connection that began after this call has completed: every
        notification committed before the call has then arrived and been applied. False when the listener is
        not healthy or the round trip fails (the caller looks the key up instead). Concurrent callers share
        one round trip, so under load this costs one ``select 1`` per batch of requests, not per request."""
        if not self.healthy():
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._wanted.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(self._check_s * 3, 1.0))
        except TimeoutError:
            return False

    def token(self) -> int:
        """Take before a lookup, give to :meth:`put` after it."""
        return self._generation

    def put(self, digest: bytes, principal: Principal, token: int) -> None:
        """Remember a principal that a lookup begun at ``token`` found, unless something was invalidated since."""
        if token != self._generation or not self.healthy():
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = dict(list(self._entries.items())[MAX_ENTRIES // 2:])
        self._entries[digest] = principal

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._generation += 1
        self._entries = {}

    def invalidate(self, payload: str) -> None:
        """Drop the entries a notification names: ``k:<key_id>`` or ``a:<account_id>`` (anything else: all)."""
        self._generation += 1
        kind, _, ident = payload.partition(":")
        if kind == "k":
            self._entries = {d: p for d, p in self._entries.items() if p.key_id != ident}
        elif kind == "a":
            self._entries = {d: p for d, p in self._entries.items() if p.account_id != ident}
        else:
            self._entries = {}

    def stop(self) -> None:
        """Stop listening (the cache is no longer trusted)."""
        self._stopping.set()

    async def run(self) -> None:
        """Listen and confirm the connection until :meth:`stop`; reconnect with backoff."""
        delay = 0.5
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._url, server_settings={"application_name": f"{APPLICATION_NAME} {os.getpid()}"})
                conn.add_termination_listener(lambda _c: self._lost())
                await conn.add_listener(CHANNEL, self._notified)
                # Listening first, then trusting: nothing notified from here on is missed, and nothing cached
                # before (under another connection) is kept.
                self.clear()
                self._conn = conn
                self.reconnects += 1
                delay = 0.5
                await self._confirm(conn)
            except Exception as exc:  # -- whatever a dying connection raises: without a listener the cache is
                # off (every request looks its key up) until this loop reconnects, so it must never end here
                self._lost()
                log.warning("key_cache_reconnect", error=repr(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
            finally:
                self._lost()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):  # -- closing a broken connection may fail any way
                        await conn.close(timeout=2)

    async def _confirm(self, conn: asyncpg.Connection) -> None:
        while not self._stopping.is_set():
            waiters, self._waiters = self._waiters, []
            self._wanted.clear()
            began = self._clock()
            try:
                await conn.fetchval("select 1", timeout=max(self._check_s * 3, 1.0))
            except BaseException:
                self._settle(waiters, False)
                raise
            self._trusted_until = began + 3 * self._check_s
            # Notifications that came before the answer were queued (call_soon) before this coroutine resumed,
            # so they are applied by now.
            self._settle(waiters, True)
            if not self._waiters:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), self._check_s)

    @staticmethod
    def _settle(waiters: list[asyncio.Future[bool]], ok: bool) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(ok)

    def _lost(self) -> None:
        self._conn = None
        self._trusted_until = 0.0
        self.clear()
        waiters, self._waiters = self._waiters, []
        self._settle(waiters, False)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.invalidate(str(payload))
