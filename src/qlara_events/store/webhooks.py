"""Webhook configuration, the delivery queue (claimed with SKIP LOCKED) and the delivery log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import asyncpg

from qlara_events.store.db import Conn

Db: TypeAlias = "asyncpg.Pool | Conn"

_WEBHOOK_COLUMNS: Final = """
webhook_id, account_id, callback_url, status, secret, previous_secret, previous_secret_expires_at,
failing_since, disabled_at, disabled_reason, created_at, updated_at
"""


# ------------------------------------------------------------------------------------------ configuration


async def get(db: Db, account_id: str) -> asyncpg.Record | None:
    """The account's webhook, or None."""
    return await db.fetchrow(f"select {_WEBHOOK_COLUMNS} from webhooks where account_id = $1", account_id)


async def create(db: Db, account_id: str, url: str, secret: str) -> asyncpg.Record | None:
    """Create the account's webhook; None when it already has one."""
    return await db.fetchrow(
        f"insert into webhooks (webhook_id, account_id, callback_url, secret) values ($1, $2, $3, $4)"
        f" on conflict (account_id) do nothing returning {_WEBHOOK_COLUMNS}",
        "wh_" + uuid.uuid4().hex[:20], account_id, url, secret,
    )


async def update_url(db: Db, account_id: str, url: str) -> asyncpg.Record | None:
    """Replace the URL (and re-enable a disabled webhook); None when there is none."""
    return await db.fetchrow(
        f"update webhooks set callback_url = $2, status = 'ACTIVE', failing_since = null, disabled_at = null,"
        f" disabled_reason = null, updated_at = now() where account_id = $1 returning {_WEBHOOK_COLUMNS}",
        account_id, url,
    )


async def delete(db: Db, account_id: str) -> bool:
    """Delete the webhook and, with it, every delivery still queued for it."""
    return await db.fetchval("delete from webhooks where account_id = $1 returning true", account_id) is True


async def rotate(db: Db, account_id: str, new_secret: str, overlap_s: int) -> asyncpg.Record | None:
    """Make ``new_secret`` current; the old one keeps signing for ``overlap_s`` seconds."""
    return await db.fetchrow(
        f"update webhooks set previous_secret = secret, secret = $2,"
        f" previous_secret_expires_at = now() + make_interval(secs => $3), updated_at = now()"
        f" where account_id = $1 returning {_WEBHOOK_COLUMNS}",
        account_id, new_secret, float(overlap_s),
    )


async def active_for_accounts(db: Db, account_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """Webhook rows (any status) of these accounts, by account id."""
    rows = await db.fetch(
        "select webhook_id, account_id, status from webhooks where account_id = any($1::text[])", list(account_ids)
    )
    return {r["account_id"]: r for r in rows}


# ------------------------------------------------------------------------------------------------- queue


@dataclasses.dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to enqueue."""

    delivery_id: str
    webhook_id: str
    account_id: str
    change_id: str
    message_id: str | None
    event_type: str
    status_rank: int | None
    body: bytes
    changed_at: dt.datetime
    #: 'scheduled', or 'dead' for a disabled webhook (kept visible and replayable).
    state: str = "scheduled"
    last_error: str | None = None


SQL_ENQUEUE: Final = """
insert into webhook_deliveries (delivery_id, webhook_id, account_id, change_id, message_id, event_type,
                                status_rank, body, changed_at, state, next_attempt_at, last_error, finished_at)
select v.delivery_id, v.webhook_id, v.account_id, v.change_id, v.message_id, v.event_type, v.status_rank,
       v.body, v.changed_at, v.state, case when v.state = 'scheduled' then now() end, v.last_error,
       case when v.state = 'dead' then now() end
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[],
            $8::bytea[], $9::timestamptz[], $10::text[], $11::text[])
     as v(delivery_id, webhook_id, account_id, change_id, message_id, event_type, status_rank, body,
          changed_at, state, last_error)
on conflict (delivery_id) do nothing
"""


async def enqueue(db: Db, items: Sequence[NewDelivery]) -> None:
    """Queue deliveries (idempotent: a replayed change finds its delivery already there)."""
    if not items:
        return
    cols = [[getattr(i, f.name) for i in items] for f in dataclasses.fields(NewDelivery)]
    await db.execute(SQL_ENQUEUE, *cols)


#: Claim due deliveries of active webhooks, at most ``free`` per webhook, leasing them to this process.
#: A lease that expired (its dispatcher died mid-attempt) makes the delivery due again.
SQL_CLAIM: Final = """
with ranked as (
    select d.delivery_id, d.webhook_id,
           row_number() over (partition by d.webhook_id order by d.next_attempt_at, d.delivery_id) as rn
    from webhook_deliveries d join webhooks w using (webhook_id)
    where w.status = 'ACTIVE' and not (d.webhook_id = any($2::text[]))
      and ((d.state = 'scheduled' and d.next_attempt_at <= now())
           or (d.state = 'in_flight' and d.lease_until < now()))
), caps as (
    select * from unnest($3::text[], $4::int[]) as c(webhook_id, free)
), picked as (
    select d.delivery_id from webhook_deliveries d
    join ranked r using (delivery_id)
    left join caps c on c.webhook_id = r.webhook_id
    where r.rn <= coalesce(c.free, $5)
    order by d.next_attempt_at
    limit $1
    for update of d skip locked
)
update webhook_deliveries d
set state = 'in_flight', lease_until = now() + make_interval(secs => $6), attempts = d.attempts + 1
from picked
where d.delivery_id = picked.delivery_id
returning d.delivery_id, d.webhook_id, d.message_id, d.event_type, d.status_rank, d.body, d.attempts,
          d.schedule_base, d.changed_at,
          (select a.status_rank from webhook_acked a
            where a.webhook_id = d.webhook_id and a.message_id = d.message_id) as acked_rank
"""


async def claim(db: Db, *, limit: int, exclude: Sequence[str], free: dict[str, int], default_free: int,
                lease_s: float) -> list[asyncpg.Record]:
    """Lease up to ``limit`` due deliveries to this process."""
    return list(await db.fetch(SQL_CLAIM, limit, list(exclude), list(free), list(free.values()),
                               default_free, lease_s))


async def endpoints(db: Db, webhook_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """URL and signing secrets of these webhooks (the previous secret only while it still signs)."""
    rows = await db.fetch(
        "select webhook_id, callback_url, secret,"
        " case when previous_secret_expires_at > now() then previous_secret end as previous_secret"
        " from webhooks where webhook_id = any($1::text[])", list(webhook_ids),
    )
    return {r["webhook_id"]: r for r in rows}


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The result of one attempt, as recorded."""

    delivery_id: str
    webhook_id: str
    message_id: str | None
    status_rank: int | None
    attempt: int
    attempted_at: dt.datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    outcome: str  # policy.Outcome value
    next_delay_s: float | None


async def record(db: asyncpg.Pool, r: AttemptRecord, *, disable_after_s: int) -> str | None:
    """Record an attempt and move the delivery on; return the reason if the webhook got disabled."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "insert into webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms, error,"
            " outcome) values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
            r.delivery_id, r.attempt, r.attempted_at, r.status_code, r.latency_ms, r.error, r.outcome,
        )
        if r.outcome == "failed":
            await conn.execute(
                "update webhook_deliveries set state = 'scheduled', lease_until = null,"
                " next_attempt_at = now() + make_interval(secs => $2), last_attempt_at = $3,"
                " last_status_code = $4, last_error = $5, last_latency_ms = $6 where delivery_id = $1",
                r.delivery_id, r.next_delay_s or 0.0, r.attempted_at, r.status_code, r.error, r.latency_ms,
            )
        else:
            await conn.execute(
                "update webhook_deliveries set state = $2, lease_until = null, next_attempt_at = null,"
                " last_attempt_at = $3, last_status_code = $4, last_error = $5, last_latency_ms = $6,"
                " finished_at = now() where delivery_id = $1",
                r.delivery_id, "dead" if r.outcome == "gone" else r.outcome, r.attempted_at, r.status_code,
                r.error, r.latency_ms,
            )
        if r.outcome == "succeeded":
            if r.message_id is not None and r.status_rank is not None:
                await conn.execute(
                    "insert into webhook_acked (webhook_id, message_id, status_rank) values ($1, $2, $3)"
                    " on conflict (webhook_id, message_id) do update"
                    " set status_rank = greatest(webhook_acked.status_rank, excluded.status_rank)",
                    r.webhook_id, r.message_id, r.status_rank,
                )
            await conn.execute("update webhooks set failing_since = null where webhook_id = $1 and"
                               " failing_since is not null", r.webhook_id)
            return None
        if r.outcome == "superseded":
            return None
        if r.outcome == "gone":
            reason = "the endpoint answered 410 Gone"
        else:
            since = await conn.fetchval(
                "update webhooks set failing_since = coalesce(failing_since, $2) where webhook_id = $1"
                " returning failing_since", r.webhook_id, r.attempted_at,
            )
            if since is None or (r.attempted_at - since).total_seconds() < disable_after_s:
                return None
            reason = f"failing continuously since {since.isoformat()}"
        await conn.execute(
            "update webhooks set status = 'DISABLED', disabled_at = now(), disabled_reason = $2,"
            " updated_at = now() where webhook_id = $1 and status = 'ACTIVE'", r.webhook_id, reason,
        )
        return reason


# ------------------------------------------------------------------------------------------ delivery log

SQL_LOG: Final = """
select d.delivery_id, d.message_id, d.event_type, d.state, d.attempts, d.created_at, d.last_attempt_at,
       d.last_status_code, d.last_latency_ms, d.last_error, d.next_attempt_at, d.finished_at,
       coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'attemptedAt', a.attempted_at,
                                                     'statusCode', a.status_code, 'latencyMs', a.latency_ms,
                                                     'error', a.error, 'outcome', a.outcome)
                                  order by a.attempt)
                 from webhook_attempts a where a.delivery_id = d.delivery_id), '[]'::jsonb) as attempt_log
from webhook_deliveries d
where d.webhook_id = $1
  and ($2::text[] is null or d.state = any($2::text[]))
  and ($3::timestamptz is null or d.created_at >= $3)
  and ($4::timestamptz is null or d.created_at < $4)
  and ($5::text is null or d.message_id = $5)
  and ($6::timestamptz is null or (d.created_at, d.delivery_id) > ($6, $7::text))
order by d.created_at, d.delivery_id
limit $8
"""


async def deliveries(db: Db, webhook_id: str, *, states: list[str] | None, since: dt.datetime | None,
                     until: dt.datetime | None, message_id: str | None,
                     after: tuple[dt.datetime, str] | None, limit: int) -> list[asyncpg.Record]:
    """A page of the delivery log, oldest first, after the keyset cursor ``after``."""
    return list(await db.fetch(SQL_LOG, webhook_id, states, since, until, message_id,
                               after[0] if after else None, after[1] if after else None, limit))


async def retry_one(db: Db, webhook_id: str, delivery_id: str) -> bool:
    """Schedule one delivery for an immediate new attempt (whatever its state, unless in flight)."""
    return await db.fetchval(
        "update webhook_deliveries set state = 'scheduled', next_attempt_at = now(), finished_at = null,"
        " schedule_base = attempts where webhook_id = $1 and delivery_id = $2 and state <> 'in_flight'"
        " returning true", webhook_id, delivery_id,
    ) is True


SQL_RECOVER_CHUNK: Final = """
with chunk as (
    select delivery_id from webhook_deliveries
    where webhook_id = $1 and created_at >= $2 and created_at < $3
      and (state = 'dead' or (state = 'scheduled' and attempts > 0))
      and (created_at, delivery_id) > ($4, $5)
    order by created_at, delivery_id
    limit $6
    for update skip locked
)
update webhook_deliveries d set state = 'scheduled', next_attempt_at = now(), schedule_base = d.attempts,
       finished_at = null
from chunk where d.delivery_id = chunk.delivery_id
returning d.created_at, d.delivery_id
"""


async def recover(db: asyncpg.Pool, webhook_id: str, since: dt.datetime, until: dt.datetime,
                  *, chunk: int = 1000) -> int:
    """Reschedule every failed or dead delivery created in [since, until), chunk by chunk (flat memory)."""
    total = 0
    cursor: tuple[dt.datetime, str] = (dt.datetime.min.replace(tzinfo=dt.UTC), "")
    while True:
        rows = await db.fetch(SQL_RECOVER_CHUNK, webhook_id, since, until, cursor[0], cursor[1], chunk)
        total += len(rows)
        if len(rows) < chunk:
            return total
        last = max(rows, key=lambda r: (r["created_at"], r["delivery_id"]))
        cursor = (last["created_at"], last["delivery_id"])


async def queue_stats(db: Db) -> dict[str, Any]:
    """Gauge values: deliveries waiting for a retry, dead-lettered, disabled webhooks."""
    row = await db.fetchrow(
        "select (select count(*) from webhook_deliveries where state = 'scheduled' and attempts > 0) as retrying,"
        " (select count(*) from webhook_deliveries where state = 'dead') as dead,"
        " (select count(*) from webhooks where status = 'DISABLED') as disabled"
    )
    assert row is not None
    return dict(row)
