"""Every account's webhook, in memory: the dispatcher's first attempts never wait on the database for it.

The cache loads every webhook at start, then listens on the Postgres channel ``qlara_webhooks`` (migration
013: a trigger notifies the account id at the commit of any change an attempt depends on: URL, status,
secrets) and reloads the accounts named, so a webhook created, changed, rotated, disabled or deleted
through the API is seen within milliseconds. A lost listener connection is reopened and everything is
reloaded (notifications sent meanwhile are lost with it); a full reload also runs every
``FULL_RELOAD_S`` as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from qlara_events.logs import get_logger
from qlara_events.standard_webhooks import secret_key

log = get_logger("dispatcher.endpoints")

CHANNEL: Final = "qlara_webhooks"
FULL_RELOAD_S: Final = 60.0

SQL_ALL: Final = """
select webhook_id, account_id, callback_url, status, secret, previous_secret, previous_secret_expires_at
from webhooks
"""
SQL_SOME: Final = SQL_ALL + " where account_id = any($1::text[])"
SQL_BY_WEBHOOK: Final = SQL_ALL + " where webhook_id = any($1::text[])"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """What an attempt needs of a webhook."""

    webhook_id: str
    account_id: str
    url: str
    active: bool
    key: bytes
    previous_key: bytes | None
    previous_expires_at: dt.datetime | None

    def keys(self, now: dt.datetime) -> list[bytes]:
        """Signing keys at ``now``: the current one, and the previous one while the rotation overlap lasts."""
        if self.previous_key is not None and self.previous_expires_at is not None and self.previous_expires_at > now:
            return [self.key, self.previous_key]
        return [self.key]

    @classmethod
    def from_row(cls, r: Any) -> Endpoint:
        """From a ``webhooks`` row (SQL_ALL's columns)."""
        return cls(
            webhook_id=r["webhook_id"], account_id=r["account_id"], url=r["callback_url"],
            active=r["status"] == "ACTIVE", key=secret_key(r["secret"]),
            previous_key=secret_key(r["previous_secret"]) if r["previous_secret"] else None,
            previous_expires_at=r["previous_secret_expires_at"],
        )


#: Longest the intake waits for notified webhooks to be applied before it takes a batch.
SETTLE_S: Final = 1.0


class EndpointCache:
    """Webhooks by account id, kept current by LISTEN/NOTIFY."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._by_account: dict[str, Endpoint] = {}
        self._dirty: set[str] = set()
        self._dirty_added = asyncio.Event()
        self._loaded = asyncio.Event()
        #: Set while every notification received has been applied (none dirty, no reload of them running).
        self._settled = asyncio.Event()
        self._stopping = asyncio.Event()
        self.reloads = 0

    def get(self, account_id: str | None) -> Endpoint | None:
        """The account's webhook (any status), or None."""
        return self._by_account.get(account_id) if account_id else None

    def by_webhook(self, webhook_ids: Sequence[str]) -> dict[str, Endpoint]:
        """Endpoints of these webhook ids (those still configured)."""
        wanted = set(webhook_ids)
        return {e.webhook_id: e for e in self._by_account.values() if e.webhook_id in wanted}

    def mark_disabled(self, webhook_id: str) -> None:
        """The dispatcher disabled this webhook itself: stop attempting it before the notification arrives."""
        for account, e in list(self._by_account.items()):
            if e.webhook_id == webhook_id:
                self._by_account[account] = dataclasses.replace(e, active=False)

    async def wait_loaded(self) -> bool:
        """Until the first full load (False if stopped first)."""
        waiter = asyncio.ensure_future(self._loaded.wait())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        return self._loaded.is_set()

    async def settled(self) -> None:
        """Until the notifications received so far are applied, so a webhook created (or deleted) before a
        change was produced is seen by that change; at most ``SETTLE_S``, so a stalled listener cannot hold up
        the intake (the change then meets the cache as it is, the documented bound)."""
        if self._settled.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), SETTLE_S)

    def stop(self) -> None:
        """Stop listening."""
        self._stopping.set()
        self._dirty_added.set()

    async def run(self) -> None:
        """Listen and reload until :meth:`stop`; reconnects with backoff."""
        delay = 0.5
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._url)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                # Listening before loading: a change committed in between is notified, not missed.
                await self._load_all(conn)
                delay = 0.5
                await self._serve(conn, lost)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("endpoint_cache_reconnect", error=repr(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):  # -- closing a broken connection may fail any way
                        await conn.close(timeout=2)

    async def _serve(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time() + FULL_RELOAD_S
        while not self._stopping.is_set():
            if lost.is_set() or conn.is_closed():
                raise OSError("listener connection lost")
            if not self._dirty:
                self._dirty_added.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty_added.wait(), max(min(next_full - loop.time(), 1.0), 0.01))
            if loop.time() >= next_full:
                await self._load_all(conn)
                next_full = loop.time() + FULL_RELOAD_S
            elif self._dirty:
                accounts, self._dirty = sorted(self._dirty), set()
                rows = await conn.fetch(SQL_SOME, accounts)
                for account in accounts:
                    self._by_account.pop(account, None)
                for r in rows:
                    self._by_account[r["account_id"]] = Endpoint.from_row(r)
                self.reloads += 1
                if not self._dirty:
                    self._settled.set()

    async def _load_all(self, conn: asyncpg.Connection) -> None:
        # Cleared before reading: a notification that arrives during the read names a later commit.
        self._dirty.clear()
        rows = await conn.fetch(SQL_ALL)
        self._by_account = {r["account_id"]: Endpoint.from_row(r) for r in rows}
        self._loaded.set()
        self.reloads += 1
        if not self._dirty:
            self._settled.set()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self._dirty.add(str(payload))
        self._settled.clear()
        self._dirty_added.set()


async def fetch(db: asyncpg.Pool, webhook_ids: Sequence[str]) -> dict[str, Endpoint]:
    """These webhooks straight from Postgres (for one the cache has not seen yet)."""
    return {r["webhook_id"]: Endpoint.from_row(r) for r in await db.fetch(SQL_BY_WEBHOOK, list(webhook_ids))}
