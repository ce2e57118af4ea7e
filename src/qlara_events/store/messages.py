"""Queries over the message status projection and its history, always scoped to one account."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from qlara_events.domain.status import DeliveryStatus

_COLUMNS: Final = """
m.message_id, m.customer_message_id, m.channel, m.destination, m.sender, m.campaign_id, m.parts, m.status,
m.description, m.error_code, m.error_message, m.failed_after_delivery, m.submitted_at, m.sent_at, m.delivered_at,
m.read_at, m.failed_at, m.updated_at
"""

SQL_BY_CUSTOMER_ID: Final = f"""
select {_COLUMNS} from messages m
where m.account_id = $1 and m.channel = $2 and m.customer_message_id = $3
order by m.submitted_at desc limit 1
"""

SQL_BY_CUSTOMER_IDS: Final = f"""
select distinct on (m.customer_message_id) {_COLUMNS} from messages m
where m.account_id = $1 and m.channel = $2 and m.customer_message_id = any($3::text[])
order by m.customer_message_id, m.submitted_at desc
"""

#: ``message_keys`` says the month first, so only that partition is read (pruned when the plan starts).
SQL_BY_MESSAGE_ID: Final = f"""
select {_COLUMNS} from messages m
where m.message_id = $2 and m.submitted_at = (select k.submitted_at from message_keys k where k.message_id = $2)
  and m.account_id = $1 and ($3::text is null or m.channel = $3)
"""

#: The window prunes the partitions to the months it covers; each is read in index order.
SQL_HISTORY: Final = f"""
select {_COLUMNS} from messages m
where m.account_id = $1 and m.channel = $2 and m.submitted_at >= $3 and m.submitted_at <= $4
  and m.status = $5
order by m.submitted_at, m.message_id
limit $6 offset $7
"""

#: Without a status filter the page is found in the index alone (it holds every column the order and the
#: window need), so an offset skips index entries rather than fetching and discarding whole rows; only the
#: page's rows are then read, each from its month.
SQL_HISTORY_ANY_STATUS: Final = f"""
with page as (
    select m.message_id, m.submitted_at from messages m
    where m.account_id = $1 and m.channel = $2 and m.submitted_at >= $3 and m.submitted_at <= $4
    order by m.submitted_at, m.message_id
    limit $5 offset $6
)
select {_COLUMNS} from page p join messages m on m.message_id = p.message_id and m.submitted_at = p.submitted_at
order by m.submitted_at, m.message_id
"""

SQL_TIMELINE: Final = """
select event_id, type, status, raw_status, provider, provider_message_id, part, effect, via, occurred_at,
       received_at, stored_at, payload
from message_events where message_id = $1
order by occurred_at, stored_at, event_id
"""


def _ts(v: Any) -> str | None:
    return None if v is None else v.isoformat().replace("+00:00", "Z")


def status_json(r: asyncpg.Record) -> dict[str, Any]:
    """A ``DeliveryStatusResponse`` from a messages row."""
    status = DeliveryStatus(r["status"])
    out: dict[str, Any] = {
        "customerMessageId": r["customer_message_id"],
        "messageId": r["message_id"],
        "channel": r["channel"],
        "destination": r["destination"],
        "sender": r["sender"],
        "campaignId": r["campaign_id"],
        "deliveryStatus": status.value,
        "deliveryStatusDescription": r["description"],
        "statusCode": status.code,
        "parts": r["parts"],
        "failedAfterDelivery": r["failed_after_delivery"],
        "submittedAt": _ts(r["submitted_at"]),
        "sentAt": _ts(r["sent_at"]),
        "deliveredAt": _ts(r["delivered_at"]),
        "readAt": _ts(r["read_at"]),
        "failedAt": _ts(r["failed_at"]),
        "updatedAt": _ts(r["updated_at"]),
    }
    if r["error_code"] is not None or r["error_message"] is not None:
        out["error"] = {"code": r["error_code"], "message": r["error_message"]}
    return out


async def by_customer_id(db: asyncpg.Pool, account_id: str, channel: str, cid: str) -> dict[str, Any] | None:
    """One message by the partner's reference on one channel."""
    r = await db.fetchrow(SQL_BY_CUSTOMER_ID, account_id, channel, cid)
    return None if r is None else status_json(r)


async def by_customer_ids(db: asyncpg.Pool, account_id: str, channel: str, ids: list[str]) -> list[dict[str, Any]]:
    """The messages among ``ids`` that exist in the account on the channel (unknown ones omitted)."""
    return [status_json(r) for r in await db.fetch(SQL_BY_CUSTOMER_IDS, account_id, channel, ids)]


async def by_message_id(db: asyncpg.Pool, account_id: str, message_id: str,
                        channel: str | None = None) -> dict[str, Any] | None:
    """One message by platform id, optionally on one channel."""
    r = await db.fetchrow(SQL_BY_MESSAGE_ID, account_id, message_id, channel)
    return None if r is None else status_json(r)


async def history(db: asyncpg.Pool, account_id: str, channel: str, start: Any, end: Any, status: str | None,
                  limit: int, offset: int) -> list[dict[str, Any]]:
    """A page of one channel's messages submitted in [start, end], oldest first (served by an index)."""
    if status is None:
        rows = await db.fetch(SQL_HISTORY_ANY_STATUS, account_id, channel, start, end, limit, offset)
    else:
        rows = await db.fetch(SQL_HISTORY, account_id, channel, start, end, status, limit, offset)
    return [status_json(r) for r in rows]


async def timeline(db: asyncpg.Pool, message_id: str) -> list[dict[str, Any]]:
    """Every event of a message in time order, with what the projector did with each."""
    out = []
    for r in await db.fetch(SQL_TIMELINE, message_id):
        p = r["payload"]
        item: dict[str, Any] = {
            "eventId": r["event_id"],
            "type": r["type"],
            "status": r["status"],
            "rawStatus": r["raw_status"],
            "provider": r["provider"],
            "providerMessageId": r["provider_message_id"],
            "part": r["part"],
            "effect": r["effect"],
            "via": r["via"],
            "description": p.get("description"),
            "occurredAt": _ts(r["occurred_at"]),
            "receivedAt": _ts(r["received_at"]),
            "storedAt": _ts(r["stored_at"]),
        }
        if "error" in p:
            item["error"] = p["error"]
        out.append({k: v for k, v in item.items() if v is not None})
    return out
