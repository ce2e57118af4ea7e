"""The SQL of the leased job queues (exports, contact imports): capped queueing, fair claiming, giving up.

A job table has ``account_id``, ``status`` ('PENDING' while queued or running), ``attempts``, ``lease_until``
and ``started_at``; a running job is a PENDING one whose lease has not expired. The statements are built once
per table from these fixed names (never from a request).
"""

from __future__ import annotations


def create_capped(table: str, columns: tuple[str, ...], returning: str) -> str:
    """Queue a job of account ``$1`` with ``columns`` = ``$3, $4...`` unless the account already has ``$2``
    queued or running.

    The advisory lock (per table and account, for the transaction) serialises concurrent requests of one
    account, so the count cannot be overtaken; run it in a transaction.
    """
    values = ", ".join(f"${i}" for i in range(3, 3 + len(columns)))
    return f"""
with locked as (select pg_advisory_xact_lock(hashtext('qlara-{table}:' || $1)))
insert into {table} (account_id, {", ".join(columns)})
select $1, {values} from locked
where (select count(*) from {table} where account_id = $1 and status = 'PENDING') < $2
returning {returning}
"""


def claim(table: str, key: str, returning: str) -> str:
    """Lease one job for ``$1`` seconds: a PENDING one, or one whose worker died (lease expired), with fewer
    than ``$2`` attempts.

    Fair across accounts, not first come first served (one account queueing many large jobs must not starve
    the others): the oldest job of the account with the fewest jobs running now, and among those the account
    whose last job started longest ago (one that never ran first), so accounts take turns.
    """
    return f"""
update {table} set attempts = attempts + 1, lease_until = now() + make_interval(secs => $1),
       started_at = coalesce(started_at, now())
where {key} = (
    select j.{key} from {table} j
    where j.status = 'PENDING' and (j.lease_until is null or j.lease_until < now()) and j.attempts < $2
    order by (select count(*) from {table} r where r.account_id = j.account_id and r.status = 'PENDING'
                  and r.lease_until >= now()),
             (select max(r.started_at) from {table} r where r.account_id = j.account_id) nulls first,
             j.created_at
    limit 1 for update of j skip locked)
returning {returning}
"""


def give_up(table: str, error: str, returning: str = "1") -> str:
    """FAILED (with ``error``) for the jobs that used ``$1`` attempts and whose last lease expired: a job that
    keeps killing its worker is not retried forever."""
    return f"""
update {table} set status = 'FAILED', error = coalesce(error, {error}), lease_until = null, completed_at = now()
where status = 'PENDING' and attempts >= $1 and (lease_until is null or lease_until < now())
returning {returning}
"""
