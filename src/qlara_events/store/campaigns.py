"""Campaigns, their recipients (streamed in batches, never all at once), counters and statistics."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Final, TypeAlias

import asyncpg

from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"

#: API field → column, for the editable fields.
FIELDS: Final = {
    "name": "name", "description": "description", "sendingMode": "sending_mode", "smsSender": "sms_sender",
    "smsBody": "sms_body", "rcsAgentId": "rcs_agent_id", "rcsTemplateId": "rcs_template_id",
    "whatsappPhoneNumberId": "whatsapp_phone_number_id", "whatsappTemplateId": "whatsapp_template_id",
    "destinationType": "destination_type", "contactListIds": "contact_list_ids", "destinations": "destinations",
    "scheduledDate": "scheduled_at", "readyToSend": "ready_to_send",
}
FINAL: Final = ("DELIVERED", "READ", "ERROR", "EXPIRED")


async def create(db: Db, account_id: str, values: dict[str, Any]) -> asyncpg.Record:
    """Insert a draft (status 0) from column values."""
    cols = list(values)
    row = await db.fetchrow(
        f"insert into campaigns (account_id, {', '.join(cols)}) values ($1, "
        + ", ".join(f"${i + 2}" for i in range(len(cols))) + ") returning *", account_id, *values.values())
    assert row is not None
    return row


async def get(db: Db, account_id: str, campaign_id: int) -> asyncpg.Record | None:
    """One campaign of the account."""
    return await db.fetchrow("select * from campaigns where account_id = $1 and campaign_id = $2",
                             account_id, campaign_id)


async def page(db: Db, account_id: str, status: int | None, limit: int, offset: int,
               channels: list[str] | None = None) -> list[asyncpg.Record]:
    """The account's campaigns, newest first; with ``channels``, those whose sending mode starts with one."""
    return list(await db.fetch(
        "select * from campaigns where account_id = $1 and ($2::smallint is null or status = $2)"
        " and ($5::text[] is null or split_part(sending_mode, '_', 1) = any($5))"
        " order by campaign_id desc limit $3 offset $4", account_id, status, limit, offset, channels))


async def update(db: Db, account_id: str, campaign_id: int, values: dict[str, Any]) -> asyncpg.Record | None:
    """Apply column values to an editable (status 0 or 1) campaign; None when not editable or absent."""
    sets = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(values))
    return await db.fetchrow(
        f"update campaigns set {sets}{', ' if sets else ''}updated_at = now()"
        " where account_id = $1 and campaign_id = $2 and status in (0, 1) returning *",
        account_id, campaign_id, *values.values())


#: Deleting a campaign that has not started gives its reservation back, in the same statement.
SQL_DELETE: Final = """
with gone as (
    delete from campaigns where account_id = $1 and campaign_id = $2 and status in (0, 1)
    returning account_id, coalesce(reserved_credit, 0) as amount
), refund as (
    update accounts a set credit = a.credit + g.amount from gone g
    where a.account_id = g.account_id and g.amount <> 0
)
select count(*) from gone
"""


async def delete(db: Db, account_id: str, campaign_id: int) -> bool:
    """Delete a campaign that has not started (status 0 or 1), returning any credit its confirmation reserved."""
    return bool(await db.fetchval(SQL_DELETE, account_id, campaign_id))


#: A confirmed campaign that has not started goes back to draft and its reservation back to the account.
SQL_UNCONFIRM: Final = """
with old as (
    select campaign_id, coalesce(reserved_credit, 0) as amount from campaigns
    where account_id = $1 and campaign_id = $2 and status = 1 and confirmed_at is not null for update
), back as (
    update campaigns c set status = 0, confirmed_at = null, reserved_credit = null, updated_at = now()
    from old where c.campaign_id = old.campaign_id
    returning c.*
), refund as (
    update accounts a set credit = a.credit + old.amount from old where a.account_id = $1 and old.amount <> 0
)
select * from back
"""


async def unconfirm(db: Db, account_id: str, campaign_id: int) -> asyncpg.Record | None:
    """Back to draft with the reserved credit returned; None when it was not confirmed-and-waiting."""
    return await db.fetchrow(SQL_UNCONFIRM, account_id, campaign_id)


async def count_recipients(db: Db, account_id: str, list_ids: list[int]) -> int:
    """Distinct contacts with a phone number in the account's lists (one SQL count, not a load)."""
    return int(await db.fetchval(
        "select count(distinct c.contact_id) from contact_list_members m"
        " join contact_lists l on l.list_id = m.list_id and l.account_id = $1"
        " join contacts c on c.contact_id = m.contact_id"
        " where m.list_id = any($2::bigint[]) and c.phone_number is not null", account_id, list_ids))


async def existing_lists(db: Db, account_id: str, list_ids: list[int]) -> set[int]:
    """Which of ``list_ids`` belong to the account."""
    rows = await db.fetch("select list_id from contact_lists where account_id = $1 and list_id = any($2::bigint[])",
                          account_id, list_ids)
    return {r["list_id"] for r in rows}


async def recipients_after(db: Db, account_id: str, list_ids: list[int], after: int,
                           limit: int) -> list[asyncpg.Record]:
    """The next batch of list recipients after contact id ``after`` (keyset: memory stays flat).

    Each batch costs about ``limit`` index entries per list, wherever the cursor is: every list contributes
    its first ``limit`` members after the cursor (an index range from ``after``), and the batch is the first
    ``limit`` distinct contacts among them. A plain join with ``distinct`` over all the lists read every
    member after the cursor for every batch (quadratic: ~100 ms per batch deep into a 1,000,000-contact
    list, against ~2 ms here). ``offset 0`` keeps the contact lookup a per-member index probe: flattened,
    the planner merge-joins ``contacts`` from its start, a scan of the whole table for a small list.
    """
    return list(await db.fetch(
        "select distinct on (m.contact_id) m.* from contact_lists l cross join lateral ("
        "  select c.contact_id, c.phone_number, c.first_name, c.last_name, c.full_name, c.email, c.custom_fields"
        "  from contact_list_members cm cross join lateral ("
        "    select * from contacts c where c.contact_id = cm.contact_id and c.phone_number is not null offset 0) c"
        "  where cm.list_id = l.list_id and cm.contact_id > $3"
        "  order by cm.list_id, cm.contact_id limit $4) m"
        " where l.account_id = $1 and l.list_id = any($2::bigint[])"
        " order by m.contact_id limit $4", account_id, list_ids, after, limit))


async def set_goal(db: Db, account_id: str, campaign_id: int, total: int, unit: Decimal, price: Decimal,
                   fingerprint: str) -> asyncpg.Record | None:
    """Record calculateGoal's result."""
    return await db.fetchrow(
        "update campaigns set total_destinations = $3, unit_price = $4, price = $5, goal_fingerprint = $6,"
        " goal_calculated_at = now(), updated_at = now() where account_id = $1 and campaign_id = $2"
        " and status in (0, 1) returning *", account_id, campaign_id, total, unit, price, fingerprint)


async def lock(conn: Conn, account_id: str, campaign_id: int) -> asyncpg.Record | None:
    """One campaign of the account, locked until the end of the caller's transaction."""
    return await conn.fetchrow("select * from campaigns where account_id = $1 and campaign_id = $2 for update",
                               account_id, campaign_id)


async def confirm(conn: Conn, account_id: str, campaign_id: int, price: Decimal) -> bool:
    """Reserve the price from the account's credit and queue the campaign (locked by :func:`lock` in this
    transaction, and checked by the caller); False when the credit is insufficient."""
    credit = await conn.fetchval("update accounts set credit = credit - $2 where account_id = $1"
                                 " and credit >= $2 returning credit", account_id, price)
    if credit is None:
        return False
    await conn.execute("update campaigns set status = 1, confirmed_at = now(), reserved_credit = $3,"
                       " updated_at = now() where account_id = $1 and campaign_id = $2", account_id, campaign_id, price)
    return True


async def add_credit(db: Db, account_id: str, amount: Decimal) -> Decimal:
    """Top an account's credit up (operators)."""
    return Decimal(await db.fetchval("update accounts set credit = credit + $2 where account_id = $1 returning credit",
                                     account_id, amount))


# ------------------------------------------------------------------------------------------------ runner

SQL_CLAIM: Final = """
update campaigns set status = 2, started_at = coalesce(started_at, now()),
       deadline_at = coalesce(deadline_at, now() + make_interval(secs => $2)),
       lease_until = now() + make_interval(secs => $1), expansion_attempts = expansion_attempts + 1,
       updated_at = now()
where campaign_id = (
    select campaign_id from campaigns
    where confirmed_at is not null and not expansion_done
      and ((status = 1 and (scheduled_at is null or scheduled_at <= now()))
           or (status = 2 and (lease_until is null or lease_until < now())))
    order by confirmed_at limit 1 for update skip locked)
returning *
"""


async def claim(db: Db, lease_s: float, deadline_s: float) -> asyncpg.Record | None:
    """Lease the next campaign due for expansion (a new one, or one whose runner died)."""
    return await db.fetchrow(SQL_CLAIM, lease_s, deadline_s)


#: One statement a batch: the contacts a campaign batch was handed to the senders for get the channel their
#: message goes out on first (lastContactType) and the campaign's sendingMode (lastCampaignType).
SQL_MARK_CONTACTED: Final = """
update contacts set last_contact_type = $3, last_campaign_type = $4
where account_id = $1 and contact_id = any($2::bigint[])
"""


async def mark_contacted(db: Db, account_id: str, contact_ids: list[int], channel: str, sending_mode: str) -> None:
    """Record the last campaign send on a batch of the account's contacts (updatedAt is left alone: the
    contact was not edited)."""
    if contact_ids:
        await db.execute(SQL_MARK_CONTACTED, account_id, contact_ids, channel, sending_mode)


async def progress(db: Db, campaign_id: int, expanded: int, cursor: str, done: bool, lease_s: float) -> None:
    """Record how far expansion got (the resume point) and extend the lease."""
    await db.execute(
        "update campaigns set expanded = $2, expansion_cursor = $3, expansion_done = $4,"
        " lease_until = case when $4 then null else now() + make_interval(secs => $5) end, updated_at = now()"
        " where campaign_id = $1", campaign_id, expanded, cursor, done, lease_s)


#: Settling a campaign that ended: it is charged for the messages handed to the senders (expanded x
#: unit price), never more than its reservation, and the account gets the rest of the reservation back.
#: (The runner never sends past the confirmed count, so the cap only guards rows from before that rule.)
#: ``{ended}`` is the update that ends campaigns.
_SETTLE: Final = """
with ended as ({ended}
    returning c.campaign_id, c.account_id, c.reserved_credit, c.charged_credit
), settle as (
    update accounts a set credit = a.credit + s.amount
    from (select account_id, sum(reserved_credit - charged_credit) as amount from ended
          where reserved_credit is not null group by account_id) s
    where a.account_id = s.account_id and s.amount <> 0
)
select campaign_id from ended
"""
_CHARGE: Final = ("charged_credit = case when c.reserved_credit is null then null"
                  " else least(c.expanded * c.unit_price, c.reserved_credit) end")

SQL_FAIL: Final = _SETTLE.format(ended=f"""
    update campaigns c set status = 4, failed_reason = $2, lease_until = null, completed_at = now(),
           updated_at = now(), {_CHARGE}
    where c.campaign_id = $1 and c.status in (1, 2)""")


async def fail(db: Db, campaign_id: int, reason: str) -> None:
    """Status 4 with the reason; the campaign is settled (charged for what was sent)."""
    await db.execute(SQL_FAIL, campaign_id, reason[:1000])


SQL_COMPLETE: Final = _SETTLE.format(ended=f"""
    update campaigns c set status = 3, completed_at = now(), updated_at = now(), {_CHARGE}
    where c.status = 2 and c.expansion_done and (
        c.deadline_at < now()
        or c.expanded <= (select coalesce(sum(k.count), 0) from campaign_counters k
                          where k.campaign_id = c.campaign_id::text
                            and k.status in ({", ".join(f"'{s}'" for s in FINAL)})))""")


async def complete_finished(db: Db) -> list[int]:
    """Move to status 3 every sending campaign whose messages are all final, or whose deadline passed."""
    return [r["campaign_id"] for r in await db.fetch(SQL_COMPLETE)]


# ----------------------------------------------------------------------------------------------- stats

async def totals(db: Db, campaign_id: int) -> dict[str, int]:
    """Current status distribution of a campaign's messages."""
    rows = await db.fetch("select status, sum(count)::bigint as n from campaign_counters where campaign_id = $1"
                          " group by status", str(campaign_id))
    return {r["status"]: int(r["n"]) for r in rows}


SQL_STATS: Final = """
select date_trunc($2, k.hour at time zone 'UTC') as period, k.status, sum(k.count)::bigint as n
from campaign_counters k join campaigns c on k.campaign_id = c.campaign_id::text
where c.account_id = $1 and k.hour >= $3 and k.hour < $4
  and ($5::text[] is null or split_part(c.sending_mode, '_', 1) = any($5))
group by 1, 2
"""


async def period_stats(db: Db, account_id: str, unit: str, start: dt.datetime, end: dt.datetime,
                       channels: list[str] | None) -> list[asyncpg.Record]:
    """(period, status, count) rows from the counters, for the account's campaigns whose sending mode starts
    with one of ``channels`` (all of them: None)."""
    assert unit in ("hour", "day", "week", "month")
    return list(await db.fetch(SQL_STATS, account_id, unit, start, end, channels))
