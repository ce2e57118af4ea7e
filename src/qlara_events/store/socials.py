"""Social profile connections (read-only through the API; operators register them from the CLI)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Final, TypeAlias

import asyncpg

from qlara_events.secrets_box import seal
from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"
PLATFORMS: Final = ("facebook", "instagram", "linkedin", "google", "tiktok", "whatsapp")
COLUMNS: Final = ("connection_id, platform, profile_id, username, profile_name, picture_url, phone_number, pages,"
                  " token_expires_at, revoked_at, connected_at")


def token_context(account_id: str, platform: str, profile_id: str) -> str:
    """Associated data binding a sealed token to its row."""
    return json.dumps([account_id, platform, profile_id])


async def connect(db: Db, key: bytes, *, account_id: str, platform: str, profile_id: str, token: str,
                  expires_at: dt.datetime | None, username: str | None = None, profile_name: str | None = None,
                  picture_url: str | None = None, phone_number: str | None = None,
                  pages: list[dict[str, object]] | None = None) -> int:
    """Register (or refresh) a connection; the token is stored sealed."""
    sealed = seal(key, token, token_context(account_id, platform, profile_id))
    return int(await db.fetchval(
        "insert into social_connections (account_id, platform, profile_id, username, profile_name, picture_url,"
        " phone_number, pages, token_ciphertext, token_expires_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " on conflict (account_id, platform, profile_id) do update set username = excluded.username,"
        " profile_name = excluded.profile_name, picture_url = excluded.picture_url,"
        " phone_number = excluded.phone_number, pages = excluded.pages,"
        " token_ciphertext = excluded.token_ciphertext, token_expires_at = excluded.token_expires_at,"
        " revoked_at = null, connected_at = now() returning connection_id",
        account_id, platform, profile_id, username, profile_name, picture_url, phone_number, pages or [], sealed,
        expires_at))


async def revoke(db: Db, account_id: str, platform: str, profile_id: str) -> bool:
    """Mark a connection's token revoked (it then reports ``disconnected``)."""
    return await db.fetchval(
        "update social_connections set revoked_at = now() where account_id = $1 and platform = $2"
        " and profile_id = $3 returning true", account_id, platform, profile_id) is True


async def list_for(db: Db, account_id: str, platform: str | None = None) -> list[asyncpg.Record]:
    """The account's connections, optionally of one platform."""
    return list(await db.fetch(
        f"select {COLUMNS} from social_connections where account_id = $1 and ($2::text is null or platform = $2)"
        " order by platform, connected_at", account_id, platform))


async def sealed_token(db: Db, account_id: str, platform: str, profile_id: str) -> bytes | None:
    """The stored (sealed) token of a connection."""
    value: bytes | None = await db.fetchval(
        "select token_ciphertext from social_connections where account_id = $1 and platform = $2"
        " and profile_id = $3", account_id, platform, profile_id)
    return value
