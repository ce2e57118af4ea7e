"""Conversations, their messages and the account's users, always scoped to one account."""

from __future__ import annotations

import datetime as dt
from typing import Final, TypeAlias

import asyncpg

from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"

ORDERABLE: Final = {"lastMessageDate": "last_message_at", "createdAt": "created_at", "unreadCount": "unread",
                    "chatId": "chat_id"}

_COLUMNS: Final = """
c.chat_id, c.channel, c.contact, c.our_address, c.unread, c.last_message_preview, c.last_message_at,
c.last_inbound_at, c.archived, c.created_at, c.updated_at, u.user_id as assignee_id, u.name as assignee_name
"""


async def list_conversations(db: Db, account_id: str, *, date_from: dt.datetime | None, channels: list[str] | None,
                             unread_only: bool, archived: bool | None, order_column: str, descending: bool,
                             limit: int, offset: int) -> list[asyncpg.Record]:
    """A page of the account's conversations."""
    assert order_column in ORDERABLE.values()
    direction = "desc nulls last" if descending else "asc nulls first"
    return list(await db.fetch(
        f"select {_COLUMNS} from conversations c left join users u on u.user_id = c.assignee_user_id"
        " where c.account_id = $1 and ($2::timestamptz is null or c.last_message_at >= $2)"
        " and ($3::text[] is null or c.channel = any($3)) and (not $4 or c.unread > 0)"
        " and ($5::bool is null or c.archived = $5)"
        f" order by c.{order_column} {direction}, c.chat_id limit $6 offset $7",
        account_id, date_from, channels, unread_only, archived, limit, offset))


async def get_conversation(db: Db, account_id: str, chat_id: int) -> asyncpg.Record | None:
    """One conversation of the account."""
    return await db.fetchrow(
        f"select {_COLUMNS} from conversations c left join users u on u.user_id = c.assignee_user_id"
        " where c.account_id = $1 and c.chat_id = $2", account_id, chat_id)


async def messages(db: Db, chat_id: int, id_from: int | None, id_to: int | None, limit: int) -> list[asyncpg.Record]:
    """The conversation's messages in chronological (id) order within [id_from, id_to]."""
    return list(await db.fetch(
        "select id, direction, event_id, message_id, text, message_type, media, occurred_at from"
        " conversation_messages where chat_id = $1 and ($2::bigint is null or id >= $2)"
        " and ($3::bigint is null or id <= $3) order by id limit $4", chat_id, id_from, id_to, limit))


async def set_flag(db: Db, account_id: str, chat_id: int, sql_set: str) -> bool:
    """Apply one of the fixed updates below to a conversation of the account."""
    assert sql_set in (MARK_READ, ARCHIVE, UNARCHIVE, UNASSIGN)
    return await db.fetchval(
        f"update conversations set {sql_set}, updated_at = now() where account_id = $1 and chat_id = $2"
        " returning true", account_id, chat_id) is True


MARK_READ: Final = "unread = 0"
ARCHIVE: Final = "archived = true"
UNARCHIVE: Final = "archived = false"
UNASSIGN: Final = "assignee_user_id = null"


async def assign(db: Db, account_id: str, chat_id: int, user_id: int) -> bool:
    """Assign a conversation to a user of the same account; False when either is not the account's."""
    return await db.fetchval(
        "update conversations set assignee_user_id = $3, updated_at = now() where account_id = $1 and chat_id = $2"
        " and exists (select 1 from users where user_id = $3 and account_id = $1) returning true",
        account_id, chat_id, user_id) is True


async def users(db: Db, account_id: str) -> list[asyncpg.Record]:
    """The account's users (assignable to conversations)."""
    return list(await db.fetch("select user_id, name, email, avatar_url from users where account_id = $1"
                               " order by user_id", account_id))


async def create_user(db: Db, account_id: str, name: str, email: str | None) -> int:
    """Create an account user; return its numeric id."""
    return int(await db.fetchval("insert into users (account_id, name, email) values ($1, $2, $3) returning user_id",
                                 account_id, name, email))


# -------------------------------------------------------------------------- inbound addresses (senders)


async def add_sender(db: Db, channel: str, address: str, account_id: str) -> None:
    """Route inbound messages sent to ``address`` on ``channel`` to the account (from another, if routed)."""
    await db.execute("insert into sender_addresses (channel, address, account_id) values ($1, $2, $3)"
                     " on conflict (channel, address) do update set account_id = excluded.account_id",
                     channel, address, account_id)


async def list_senders(db: Db, account_id: str | None = None) -> list[asyncpg.Record]:
    """The routed addresses by account, channel and address; only ``account_id``'s when given."""
    return list(await db.fetch(
        "select channel, address, account_id from sender_addresses where $1::text is null or account_id = $1"
        " order by account_id, channel, address", account_id))


async def remove_sender(db: Db, channel: str, address: str, account_id: str) -> bool:
    """Stop routing ``address`` on ``channel`` to the account; False when it is not routed there. Messages it
    already received stay the account's."""
    return await db.fetchval("delete from sender_addresses where channel = $1 and address = $2 and account_id = $3"
                             " returning true", channel, address, account_id) is True


async def record_reply(conn: Conn, chat_id: int, message_id: str, text: str, message_type: str,
                       at: dt.datetime) -> int:
    """Store an outbound reply in the thread and make it the conversation's last message."""
    mid = await conn.fetchval(
        "insert into conversation_messages (chat_id, direction, message_id, text, message_type, occurred_at)"
        " values ($1, 'OUTBOUND', $2, $3, $4, $5) returning id", chat_id, message_id, text, message_type, at)
    await conn.execute(
        "update conversations set last_message_preview = $2, last_message_at = greatest(last_message_at, $3),"
        " updated_at = now() where chat_id = $1", chat_id, text[:200], at)
    return int(mid)
