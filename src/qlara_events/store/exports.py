"""Export jobs (a durable queue with leases) and the queries that stream their rows with COPY."""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, TypeAlias

import asyncpg

from qlara_events.store import leases
from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"
KINDS: Final = ("MESSAGE_HISTORY", "DELIVERY_REPORTS", "CONTACTS")
COLUMNS: Final = ("export_id, kind, params, status, attempts, row_count, size, storage_key, error, created_at,"
                  " started_at, completed_at, expires_at")


#: Queue a job unless the account already has ``$2`` queued or running.
SQL_CREATE_CAPPED: Final = leases.create_capped("exports", ("kind", "params"), COLUMNS)


async def create(conn: Conn, account_id: str, kind: str, params: dict[str, Any],
                 max_pending: int) -> asyncpg.Record | None:
    """Queue a job; None when the account already has ``max_pending`` jobs queued or running."""
    async with conn.transaction():
        return await conn.fetchrow(SQL_CREATE_CAPPED, account_id, max_pending, kind, params)


def _visible(n: int) -> str:
    """SQL: the jobs a key restricted to the channels ``$n`` (a text[]; null: unrestricted) may see.

    Message jobs queued by such a key carry ``params.channels`` and export only those channels; a job without
    it holds every channel. Contacts are not per channel.
    """
    return (f"(${n}::text[] is null or kind = 'CONTACTS'"
            f" or (params ? 'channels' and params->'channels' <@ to_jsonb(${n}::text[])))")


async def page(db: Db, account_id: str, limit: int, offset: int,
               channels: list[str] | None = None) -> list[asyncpg.Record]:
    """The account's jobs (those a key restricted to ``channels`` may see), newest first."""
    return list(await db.fetch(f"select {COLUMNS} from exports where account_id = $1 and {_visible(4)}"
                               " order by created_at desc, export_id desc limit $2 offset $3",
                               account_id, limit, offset, channels))


async def get(db: Db, account_id: str, export_id: int, channels: list[str] | None = None) -> asyncpg.Record | None:
    """One job of the account (None when a key restricted to ``channels`` may not see it)."""
    return await db.fetchrow(
        f"select {COLUMNS} from exports where account_id = $1 and export_id = $2 and {_visible(3)}",
        account_id, export_id, channels)


async def regenerate(db: Db, account_id: str, export_id: int, max_pending: int,
                     channels: list[str] | None = None) -> asyncpg.Record | None:
    """Queue a finished job again (a new file; the old one is removed by the caller); None when it is pending
    already, a key restricted to ``channels`` may not see it, or the account has ``max_pending`` jobs queued or
    running."""
    return await db.fetchrow(
        "update exports set status = 'PENDING', attempts = 0, lease_until = null, error = null, row_count = null,"
        " size = null, started_at = null, completed_at = null, expires_at = null"
        f" where account_id = $1 and export_id = $2 and status <> 'PENDING' and {_visible(4)}"
        " and (select count(*) from exports where account_id = $1 and status = 'PENDING') < $3"
        f" returning {COLUMNS}",
        account_id, export_id, max_pending, channels)


#: Claim one job (fairly across accounts, see leases.claim); jobs that failed too often end FAILED in
#: :data:`SQL_GIVE_UP` instead of being retried forever.
SQL_CLAIM: Final = leases.claim("exports", "export_id", f"{COLUMNS}, account_id")
SQL_GIVE_UP: Final = leases.give_up("exports", "'the export worker stopped repeatedly'")


async def claim(db: Db, lease_s: float, max_attempts: int) -> asyncpg.Record | None:
    """Lease the next job to this worker, after failing the ones that exhausted their attempts."""
    await db.execute(SQL_GIVE_UP, max_attempts)
    return await db.fetchrow(SQL_CLAIM, lease_s, max_attempts)


async def complete(db: Db, export_id: int, key: str, rows: int, size: int, ttl_s: int) -> None:
    """Mark a job done; its file is downloadable until ``expires_at``."""
    await db.execute(
        "update exports set status = 'COMPLETED', storage_key = $2, row_count = $3, size = $4, lease_until = null,"
        " completed_at = now(), expires_at = now() + make_interval(secs => $5) where export_id = $1",
        export_id, key, rows, size, float(ttl_s))


async def fail(db: Db, export_id: int, error: str) -> None:
    """Mark a job failed with its reason."""
    await db.execute("update exports set status = 'FAILED', error = $2, lease_until = null, completed_at = now()"
                     " where export_id = $1", export_id, error[:1000])


async def expire(db: Db) -> list[str]:
    """Expire completed jobs past their window; return their storage keys (to delete the files)."""
    rows = await db.fetch("update exports set status = 'EXPIRED' where status = 'COMPLETED' and expires_at < now()"
                          " returning storage_key")
    return [r["storage_key"] for r in rows if r["storage_key"]]


async def by_storage_key(db: Db, key: str) -> asyncpg.Record | None:
    """The job behind a file (for a signed download)."""
    return await db.fetchrow(f"select {COLUMNS} from exports where storage_key = $1 and status = 'COMPLETED'", key)


# --------------------------------------------------------------------------------------- what is exported
# Every free-text cell goes through csv_cell (migration 015): one that a spreadsheet would evaluate as a
# formula gets a leading single quote.

#: API-originated messages (campaign sends excluded) — or, with campaignId, that campaign's messages —
#: every channel in one file, by submission time.
SQL_HISTORY_CSV: Final = """
select csv_cell(m.message_id) as "messageId", csv_cell(m.customer_message_id) as "customerMessageId", m.channel,
       csv_cell(m.destination) as destination, csv_cell(m.sender) as sender, m.status as "deliveryStatus",
       csv_cell(m.description) as "deliveryStatusDescription",
       m.parts, m.submitted_at as "sendDate", m.delivered_at as "deliveryDate", m.read_at as "readDate",
       m.failed_at as "failedDate", csv_cell(m.error_code) as "errorCode"
from messages m
where m.account_id = $1 and m.submitted_at >= $2 and m.submitted_at <= $3
  and (($6::text is null and m.campaign_id is null) or m.campaign_id = $6)
  and ($4::text is null or m.sender = $4) and ($5::text is null or m.destination = $5)
  and ($7::text[] is null or m.channel = any($7::text[]))
  and ($8::text is null or m.channel = $8) and ($9::text is null or m.status = $9)
order by m.submitted_at, m.message_id
"""

#: Every status receipt of the account's messages in a window or of one campaign.
SQL_DELIVERY_REPORTS_CSV: Final = """
select csv_cell(e.message_id) as "messageId", csv_cell(m.customer_message_id) as "customerMessageId",
       csv_cell(m.campaign_id) as "campaignId", m.channel, csv_cell(m.destination) as destination, e.status,
       csv_cell(e.raw_status) as "providerStatus", e.provider, e.effect,
       e.occurred_at as "occurredAt", e.received_at as "receivedAt"
from message_events e join messages m on m.message_id = e.message_id
where m.account_id = $1 and e.type = 'message.status'
  and ($2::text is null or m.campaign_id = $2)
  and ($3::timestamptz is null or e.occurred_at >= $3) and ($4::timestamptz is null or e.occurred_at <= $4)
  and ($5::text[] is null or m.channel = any($5::text[]))
order by e.occurred_at, e.event_id
"""

#: The account's contacts: every one, the members of some lists, or some ids — each contact once, by id. Lists
#: and ids of other accounts match nothing (the contact and the list must both be the account's). listIds is
#: every list of the account the contact belongs to, ';'-joined; timestamps are ISO 8601 in UTC.
SQL_CONTACTS_CSV: Final = """
select c.contact_id as "id", csv_cell(c.phone_number) as "phoneNumber", csv_cell(c.email) as email,
       csv_cell(c.first_name) as "firstName", csv_cell(c.last_name) as "lastName", csv_cell(c.full_name) as "fullName",
       c.gender, c.custom_fields::text as "customFields",
       c.is_valid::text as "isValid", array_to_string(c.communication_supported, ';') as "communicationSupported",
       c.is_test::text as "isTest", c.last_contact_type as "lastContactType",
       c.last_campaign_type as "lastCampaignType",
       (select string_agg(m.list_id::text, ';' order by m.list_id)
        from contact_list_members m join contact_lists l on l.list_id = m.list_id and l.account_id = $1
        where m.contact_id = c.contact_id) as "listIds",
       to_char(c.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as "createdAt",
       to_char(c.updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as "updatedAt"
from contacts c
where c.account_id = $1
  and ($2::bigint[] is null or exists (
      select 1 from contact_list_members m join contact_lists l on l.list_id = m.list_id and l.account_id = $1
      where m.contact_id = c.contact_id and m.list_id = any($2::bigint[])))
  and ($3::bigint[] is null or c.contact_id = any($3::bigint[]))
order by c.contact_id
"""


def history_args(account_id: str, p: dict[str, Any]) -> tuple[Any, ...]:
    """Arguments of :data:`SQL_HISTORY_CSV` from a job's params."""
    return (account_id, dt.datetime.fromisoformat(p["startDateTime"]), dt.datetime.fromisoformat(p["endDateTime"]),
            p.get("sender"), p.get("destination"), p.get("campaignId"), p.get("channels"), p.get("channel"),
            p.get("status"))


def reports_args(account_id: str, p: dict[str, Any]) -> tuple[Any, ...]:
    """Arguments of :data:`SQL_DELIVERY_REPORTS_CSV` from a job's params."""
    start = p.get("startDateTime")
    end = p.get("endDateTime")
    return (account_id, None if p.get("campaignId") is None else str(p["campaignId"]),
            dt.datetime.fromisoformat(start) if start else None, dt.datetime.fromisoformat(end) if end else None,
            p.get("channels"))


def contacts_args(account_id: str, p: dict[str, Any]) -> tuple[Any, ...]:
    """Arguments of :data:`SQL_CONTACTS_CSV` from a job's params (no listIds nor contactIds: every contact)."""
    list_ids = p.get("listIds")
    contact_ids = p.get("contactIds")
    return (account_id, None if list_ids is None else [int(i) for i in list_ids],
            None if contact_ids is None else [int(i) for i in contact_ids])
