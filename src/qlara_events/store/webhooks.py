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


# ------------------------------------------------------------------------------------------------- queue


@dataclasses.dataclass(slots=True)
class NewDelivery:
    """A delivery row written by the dispatcher's intake: after its first attempt (final or scheduled for a
    retry), or without one (spilled to the retry schedule, leased while an attempt runs, or dead)."""

    delivery_id: str
    webhook_id: str
    account_id: str
    change_id: str
    message_id: str | None
    event_type: str
    status_rank: int | None
    body: bytes
    changed_at: dt.datetime
    #: 'scheduled' (due after ``next_delay_s``), 'in_flight' (leased for ``lease_s``), 'succeeded', 'dead',
    #: 'superseded'.
    state: str = "scheduled"
    attempts: int = 0
    next_delay_s: float | None = 0.0
    lease_s: float | None = None
    last_attempt_at: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_latency_ms: int | None = None


_NEW_FIELDS: Final = tuple(f.name for f in dataclasses.fields(NewDelivery))

SQL_INSERT_DELIVERIES: Final = """
insert into webhook_deliveries (delivery_id, webhook_id, account_id, change_id, message_id, event_type,
                                status_rank, body, changed_at, state, attempts, next_attempt_at, lease_until,
                                last_attempt_at, last_status_code, last_error, last_latency_ms, finished_at)
select v.delivery_id, v.webhook_id, v.account_id, v.change_id, v.message_id, v.event_type, v.status_rank,
       v.body, v.changed_at, v.state, v.attempts,
       case when v.state = 'scheduled' then now() + make_interval(secs => coalesce(v.delay, 0)) end,
       case when v.state = 'in_flight' then now() + make_interval(secs => v.lease) end,
       v.last_attempt_at, v.last_status_code, v.last_error, v.last_latency_ms,
       case when v.state in ('succeeded', 'dead', 'superseded') then now() end
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[],
            $8::bytea[], $9::timestamptz[], $10::text[], $11::int[], $12::float8[], $13::float8[],
            $14::timestamptz[], $15::int[], $16::text[], $17::int[])
     as v(delivery_id, webhook_id, account_id, change_id, message_id, event_type, status_rank, body,
          changed_at, state, attempts, delay, lease, last_attempt_at, last_status_code, last_error,
          last_latency_ms)
on conflict (delivery_id) do nothing
"""


async def enqueue(db: Db, items: Sequence[NewDelivery]) -> None:
    """Write delivery rows (idempotent: a replayed change finds its delivery already there)."""
    if not items:
        return
    await db.execute(SQL_INSERT_DELIVERIES, *[[getattr(i, name) for i in items] for name in _NEW_FIELDS])


#: For the changes of one intake batch: which already have a delivery (a replayed or twice-relayed change),
#: and the highest status each partner acknowledged for the message (the superseded rule).
SQL_KNOWN: Final = """
select v.delivery_id, d.delivery_id is not null as known, a.status_rank as acked_rank
from unnest($1::text[], $2::text[], $3::text[]) as v(delivery_id, webhook_id, message_id)
left join webhook_deliveries d on d.delivery_id = v.delivery_id
left join webhook_acked a on a.webhook_id = v.webhook_id and a.message_id = v.message_id
"""


async def known(db: Db, items: Sequence[tuple[str, str, str | None]]) -> dict[str, tuple[bool, int | None]]:
    """(delivery id, webhook id, message id) -> (a delivery row exists, acknowledged rank or None)."""
    if not items:
        return {}
    rows = await db.fetch(SQL_KNOWN, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items])
    return {r["delivery_id"]: (r["known"], r["acked_rank"]) for r in rows}


#: Claim due deliveries of active webhooks, at most ``free`` per webhook, leasing them to this process.
#: A lease that expired (its dispatcher died mid-attempt) makes the delivery due again.
SQL_CLAIM: Final = """
with cand as (
    -- A bounded set of the oldest due rows (each branch served by its partial index): ranking every due
    -- row on every claim made claims slower as a backlog grew.
    (select delivery_id, webhook_id, next_attempt_at from webhook_deliveries
     where state = 'scheduled' and next_attempt_at <= now() and not (webhook_id = any($2::text[]))
     order by next_attempt_at limit $1 * 20)
    union all
    (select delivery_id, webhook_id, next_attempt_at from webhook_deliveries
     where state = 'in_flight' and lease_until < now() and not (webhook_id = any($2::text[]))
     order by lease_until limit $1)
), ranked as (
    select c.delivery_id, c.webhook_id,
           row_number() over (partition by c.webhook_id order by c.next_attempt_at, c.delivery_id) as rn
    from cand c join webhooks w using (webhook_id)
    where w.status = 'ACTIVE'
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
    #: The delivery row is written in the same flush, already in its final state (a first attempt made
    #: straight from the stream): only the attempt, the acknowledgement and the webhook's health are recorded.
    fresh: bool = False


SQL_ATTEMPTS: Final = """
insert into webhook_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms, error, outcome)
select * from unnest($1::text[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[], $7::text[])
on conflict do nothing
"""
SQL_RESCHEDULE: Final = """
update webhook_deliveries d set state = 'scheduled', lease_until = null,
       next_attempt_at = now() + make_interval(secs => v.delay), last_attempt_at = v.at,
       last_status_code = v.code, last_error = v.error, last_latency_ms = v.latency
from unnest($1::text[], $2::float8[], $3::timestamptz[], $4::int[], $5::text[], $6::int[])
     as v(id, delay, at, code, error, latency)
where d.delivery_id = v.id
"""
SQL_FINISH: Final = """
update webhook_deliveries d set state = v.state, lease_until = null, next_attempt_at = null,
       last_attempt_at = v.at, last_status_code = v.code, last_error = v.error, last_latency_ms = v.latency,
       finished_at = now()
from unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::text[], $6::int[])
     as v(id, state, at, code, error, latency)
where d.delivery_id = v.id
"""
SQL_ACKED: Final = """
insert into webhook_acked (webhook_id, message_id, status_rank)
select * from unnest($1::text[], $2::text[], $3::smallint[])
on conflict (webhook_id, message_id) do update
set status_rank = greatest(webhook_acked.status_rank, excluded.status_rank)
"""
SQL_HEALTHY: Final = ("update webhooks set failing_since = null where webhook_id = any($1::text[])"
                      " and failing_since is not null")
SQL_FAILING: Final = """
update webhooks w set failing_since = case when v.reset then v.first else coalesce(w.failing_since, v.first) end
from unnest($1::text[], $2::timestamptz[], $3::bool[]) as v(id, first, reset)
where w.webhook_id = v.id
returning w.webhook_id, w.failing_since
"""
SQL_DISABLE: Final = """
update webhooks w set status = 'DISABLED', disabled_at = now(), disabled_reason = v.reason, updated_at = now()
from unnest($1::text[], $2::text[]) as v(id, reason)
where w.webhook_id = v.id and w.status = 'ACTIVE'
"""


async def record(db: asyncpg.Pool, r: AttemptRecord, *, disable_after_s: int) -> str | None:
    """Record one attempt (see :func:`record_many`); the reason if its webhook got disabled."""
    return (await record_many(db, [r], disable_after_s=disable_after_s)).get(r.webhook_id)


async def record_many(db: asyncpg.Pool, records: Sequence[AttemptRecord], *, disable_after_s: int,
                      new: Sequence[NewDelivery] = ()) -> dict[str, str]:
    """Write ``new`` delivery rows, record attempts and move their deliveries on, all in one transaction of
    bulk statements.

    A webhook's continuous-failure clock restarts on a success and starts at the first failure after
    it; a webhook failing for ``disable_after_s`` or answering 410 is disabled. Returns the webhooks
    disabled here, with the reason.
    """
    if not records and not new:
        return {}
    rs = sorted(records, key=lambda r: r.attempted_at)
    failed = [r for r in rs if r.outcome == "failed" and not r.fresh]
    finished = [r for r in rs if r.outcome != "failed" and not r.fresh]
    acked: dict[tuple[str, str], int] = {}
    for r in rs:
        if r.outcome == "succeeded" and r.message_id is not None and r.status_rank is not None:
            key = (r.webhook_id, r.message_id)
            acked[key] = max(acked.get(key, 0), r.status_rank)
    # Per webhook, in time order: did it succeed, and when did failing start again after that?
    succeeded: set[str] = set()
    failing: dict[str, tuple[dt.datetime, dt.datetime, bool]] = {}  # first, last failure, reset by a success
    gone: set[str] = set()
    for r in rs:
        if r.outcome == "succeeded":
            succeeded.add(r.webhook_id)
            failing.pop(r.webhook_id, None)
        elif r.outcome in ("failed", "dead", "gone"):
            first, _, _ = failing.get(r.webhook_id, (r.attempted_at, r.attempted_at, False))
            failing[r.webhook_id] = (first, r.attempted_at, r.webhook_id in succeeded)
            if r.outcome == "gone":
                gone.add(r.webhook_id)
    disabled: dict[str, str] = {}
    async with db.acquire() as conn, conn.transaction():
        if new:
            await enqueue(conn, new)
        if not rs:
            return {}
        await conn.execute(SQL_ATTEMPTS, [r.delivery_id for r in rs], [r.attempt for r in rs],
                           [r.attempted_at for r in rs], [r.status_code for r in rs], [r.latency_ms for r in rs],
                           [r.error for r in rs], [r.outcome for r in rs])
        if failed:
            await conn.execute(SQL_RESCHEDULE, [r.delivery_id for r in failed], [r.next_delay_s or 0.0 for r in failed],
                               [r.attempted_at for r in failed], [r.status_code for r in failed],
                               [r.error for r in failed], [r.latency_ms for r in failed])
        if finished:
            await conn.execute(SQL_FINISH, [r.delivery_id for r in finished],
                               ["dead" if r.outcome == "gone" else r.outcome for r in finished],
                               [r.attempted_at for r in finished], [r.status_code for r in finished],
                               [r.error for r in finished], [r.latency_ms for r in finished])
        if acked:
            await conn.execute(SQL_ACKED, [k[0] for k in acked], [k[1] for k in acked], list(acked.values()))
        healthy = sorted(succeeded - set(failing))
        if healthy:
            await conn.execute(SQL_HEALTHY, healthy)
        if failing:
            ids = sorted(failing)
            rows = await conn.fetch(SQL_FAILING, ids, [failing[i][0] for i in ids], [failing[i][2] for i in ids])
            for row in rows:
                since, last = row["failing_since"], failing[row["webhook_id"]][1]
                if since is not None and (last - since).total_seconds() >= disable_after_s:
                    disabled[row["webhook_id"]] = f"failing continuously since {since.isoformat()}"
        for webhook_id in gone:
            disabled[webhook_id] = "the endpoint answered 410 Gone"
        if disabled:
            await conn.execute(SQL_DISABLE, list(disabled), list(disabled.values()))
    return disabled


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


async def delivery_counts(db: Db, webhook_id: str) -> dict[str, int]:
    """How many of the webhook's deliveries wait for a first attempt, wait for a retry, are being attempted, or
    are dead (the retrying and the dead are what :func:`recover` reschedules). Reads every delivery of the
    webhook: a query for operators, not for a request path."""
    row = await db.fetchrow(
        "select count(*) filter (where state = 'scheduled' and attempts = 0) as waiting,"
        " count(*) filter (where state = 'scheduled' and attempts > 0) as retrying,"
        " count(*) filter (where state = 'in_flight') as in_flight,"
        " count(*) filter (where state = 'dead') as dead"
        " from webhook_deliveries where webhook_id = $1 and state in ('scheduled', 'in_flight', 'dead')", webhook_id)
    assert row is not None
    return {name: int(n) for name, n in row.items()}


async def queue_stats(db: Db) -> dict[str, Any]:
    """Gauge values: deliveries waiting for a retry, dead-lettered, disabled webhooks."""
    row = await db.fetchrow(
        "select (select count(*) from webhook_deliveries where state = 'scheduled' and attempts > 0) as retrying,"
        " (select count(*) from webhook_deliveries where state = 'dead') as dead,"
        " (select count(*) from webhooks where status = 'DISABLED') as disabled"
    )
    assert row is not None
    return dict(row)
