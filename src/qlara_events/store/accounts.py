"""Accounts and their API keys (stored as SHA-256 digests; the raw key is shown once)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import secrets
import uuid
from collections.abc import Sequence
from typing import Final, TypeAlias

import asyncpg

from qlara_events.store.db import Conn

KEY_PREFIX: Final = "qk_"

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the account its key belongs to and the channels the key may use."""

    account_id: str
    key_id: str
    operations: frozenset[str] | None
    plan: str = "production"
    #: The account's IP allow-list (migration 020); empty: any address.
    networks: tuple[IPNetwork, ...] = ()


def hash_key(raw: str) -> bytes:
    """The stored form of an API key."""
    return hashlib.sha256(raw.encode()).digest()


def new_key() -> str:
    """A random API key: 32 bytes of entropy, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_account(conn: Conn, name: str) -> tuple[str, str]:
    """Create an account with a first API key; return (account id, raw key)."""
    account_id = str(uuid.uuid4())
    async with conn.transaction():
        await conn.execute("insert into accounts (account_id, name) values ($1, $2)", account_id, name)
        raw = await create_key(conn, account_id, name="default")
    return account_id, raw


async def create_key(conn: Conn | asyncpg.Pool, account_id: str, *, name: str | None = None,
                     operations: list[str] | None = None, description: str | None = None) -> str:
    """Create an API key for an account; return the raw key (never stored)."""
    raw, _ = await create_key_row(conn, account_id, name=name, operations=operations, description=description)
    return raw


#: A key's metadata with its owner's name and the account's plan (the entry's ``trafficType``).
SQL_KEYS: Final = """
select k.key_id, k.key_prefix, k.name, k.description, k.operations, k.created_at, k.owner_user_id,
       u.name as owner_name, a.plan
from api_keys k join accounts a using (account_id) left join users u on u.user_id = k.owner_user_id
"""


class UnknownOwner(Exception):
    """The owner named for a new key is not a user of the key's account."""


async def create_key_row(conn: Conn | asyncpg.Pool, account_id: str, *, name: str | None = None,
                         operations: list[str] | None = None, description: str | None = None,
                         owner: int | None = None) -> tuple[str, asyncpg.Record]:
    """Create an API key; return the raw key (shown once, never stored) and its stored row.

    ``owner`` must be a user of ``account_id`` (else :class:`UnknownOwner`): the insert only happens when it is.
    """
    raw = new_key()
    key_id = await conn.fetchval(
        "insert into api_keys (key_id, account_id, key_hash, key_prefix, name, operations, description,"
        " owner_user_id) select $1, $2, $3, $4, $5, $6, $7, $8::bigint"
        " where $8::bigint is null or exists (select 1 from users where user_id = $8 and account_id = $2)"
        " returning key_id",
        str(uuid.uuid4()), account_id, hash_key(raw), raw[:10], name, operations, description, owner,
    )
    if key_id is None:
        raise UnknownOwner(owner)
    row = await conn.fetchrow(SQL_KEYS + " where k.key_id = $1", key_id)
    assert row is not None
    return raw, row


async def create_key_capped(pool: asyncpg.Pool, account_id: str, max_active: int, *, name: str | None = None,
                            operations: list[str] | None = None, description: str | None = None,
                            owner: int | None = None) -> tuple[str, asyncpg.Record] | None:
    """Create a key unless the account already has ``max_active`` active keys (then None).

    The account row is locked first, so concurrent creations cannot both pass the count.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("select 1 from accounts where account_id = $1 for no key update", account_id)
        active = await conn.fetchval("select count(*) from api_keys where account_id = $1 and revoked_at is null",
                                     account_id)
        if active >= max_active:
            return None
        return await create_key_row(conn, account_id, name=name, operations=operations, description=description,
                                    owner=owner)


async def list_keys(db: Conn | asyncpg.Pool, account_id: str, owner: int | None = None) -> list[asyncpg.Record]:
    """The account's active keys, oldest first, only ``owner``'s when given (never their value: it is not
    stored)."""
    return list(await db.fetch(
        SQL_KEYS + " where k.account_id = $1 and k.revoked_at is null"
        " and ($2::bigint is null or k.owner_user_id = $2) order by k.created_at", account_id, owner))


async def key_by_value(db: Conn | asyncpg.Pool, account_id: str, raw: str) -> asyncpg.Record | None:
    """An active key of the account by its raw value (looked up by digest)."""
    return await db.fetchrow(SQL_KEYS + " where k.account_id = $1 and k.key_hash = $2 and k.revoked_at is null",
                             account_id, hash_key(raw))


async def revoke(db: Conn | asyncpg.Pool, account_id: str, key_id: str) -> bool:
    """Revoke a key at once: the next request with it is a 401."""
    return await db.fetchval(
        "update api_keys set revoked_at = now() where account_id = $1 and key_id = $2 and revoked_at is null"
        " returning true", account_id, key_id) is True


#: The account's allow-list, read with the key.
_NETWORKS: Final = "(select array_agg(n.network) from account_networks n where n.account_id = k.account_id) networks"

SQL_AUTH: Final = f"""
select k.key_id, k.account_id, k.operations, a.plan, {_NETWORKS} from api_keys k join accounts a using (account_id)
where k.key_hash = $1 and k.revoked_at is null
"""


#: The key and its shared rate-limit windows (migration 014) in one read, for the api's request path.
SQL_AUTH_WITH_WINDOWS: Final = f"""
select k.key_id, k.account_id, k.operations, a.plan, {_NETWORKS},
       w.s_start, w.s_prev, w.s_count, w.m_start, w.m_prev, w.m_count
from api_keys k join accounts a using (account_id) left join rate_windows w using (key_id)
where k.key_hash = $1 and k.revoked_at is null
"""


def _principal(row: asyncpg.Record) -> Principal:
    ops = row["operations"]
    return Principal(row["account_id"], row["key_id"], frozenset(ops) if ops else None, row["plan"],
                     tuple(row["networks"] or ()))


async def authenticate(conn: Conn | asyncpg.Pool, raw: str) -> Principal | None:
    """The principal of a raw key, or None when unknown or revoked."""
    row = await conn.fetchrow(SQL_AUTH, hash_key(raw))
    return None if row is None else _principal(row)


async def authenticate_with_windows(db: asyncpg.Pool,
                                    digest: bytes) -> tuple[Principal, asyncpg.Record] | tuple[None, None]:
    """The principal of a key digest and its row (with the key's rate-limit windows, null when it has none);
    (None, None) when the key is unknown or revoked."""
    row = await db.fetchrow(SQL_AUTH_WITH_WINDOWS, digest)
    return (None, None) if row is None else (_principal(row), row)


async def list_networks(db: Conn | asyncpg.Pool, account_id: str) -> list[IPNetwork]:
    """The account's IP allow-list, in address order (empty: requests from any address)."""
    return [r["network"] for r in await db.fetch(
        "select network from account_networks where account_id = $1 order by network", account_id)]


class UnknownAccount(Exception):
    """No account has this id."""


#: An account with what an operator looks at first: its plan, its credit and how many active keys it has.
SQL_ACCOUNTS: Final = """
select a.account_id, a.name, a.plan, a.credit, a.created_at,
       (select count(*) from api_keys k where k.account_id = a.account_id and k.revoked_at is null) as active_keys
from accounts a
"""


async def list_accounts(db: Conn | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every account, oldest first (see :data:`SQL_ACCOUNTS`)."""
    return list(await db.fetch(SQL_ACCOUNTS + " order by a.created_at, a.account_id"))


async def require_account(db: Conn | asyncpg.Pool, account_id: str) -> None:
    """Raise :class:`UnknownAccount` unless the account exists; inside a transaction its row then stays locked
    against deletion until the end (``key share``: it blocks no update of the account's other columns)."""
    if await db.fetchval("select 1 from accounts where account_id = $1 for key share", account_id) is None:
        raise UnknownAccount(account_id)


async def change_networks(conn: Conn, account_id: str, add: Sequence[IPNetwork],
                          remove: Sequence[IPNetwork]) -> list[IPNetwork]:
    """Add and remove networks of an account's allow-list in one transaction; return the list after it."""
    async with conn.transaction():
        await require_account(conn, account_id)
        await conn.execute("delete from account_networks where account_id = $1 and network = any($2::cidr[])",
                           account_id, list(remove))
        await conn.execute("insert into account_networks (account_id, network) select $1, unnest($2::cidr[])"
                           " on conflict do nothing", account_id, list(add))
        return await list_networks(conn, account_id)
