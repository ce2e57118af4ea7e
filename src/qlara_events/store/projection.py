"""Applying a batch of canonical events to Postgres in one transaction: where a receipt becomes a status.

Concurrency: events of one message can sit on different partitions (a receipt is keyed by provider id, a
status by platform id), so two projector processes may touch one message at once. Each batch therefore
takes transaction-level advisory locks on every message identity it touches (sorted, so two batches never
wait on each other in a cycle), then row locks on the messages. Under those locks a receipt and the
submission it belongs to are serialised: whichever commits second sees the first, so a receipt that
arrives before its ``message.submitted`` is stored as an orphan and applied when the submission lands.

Every statement is a bulk statement: a batch of 1,000 events costs a handful of round trips, not 1,000.
The wide ones (messages, history, outbox) take their rows as one JSON array of arrays (:func:`_rows`,
unpacked by ``jsonb_array_elements``): one orjson call instead of asyncpg encoding a dozen arrays element by
element, which was a third of the projector's CPU; Postgres reads the two forms at about the same cost.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import orjson

from qlara_events.domain.events import Event, Inbound, StatusReport, Submitted, parse_event, to_json
from qlara_events.domain.projection import Effect, MessageState, Transition, apply_report
from qlara_events.domain.status import DeliveryStatus
from qlara_events.store.db import Conn


@dataclasses.dataclass(frozen=True, slots=True)
class Incoming:
    """One event read from Kafka, with what the ingress recorded about it."""

    event: Event
    via: str
    received_at: dt.datetime
    #: ``to_json(event)``, the history payload, when the caller computed it already (the projector does it
    #: while the previous batch is in Postgres).
    payload: dict[str, Any] | None = None


@dataclasses.dataclass(slots=True)
class BatchResult:
    """What a batch did: effects per event type, and the transitions written to the outbox."""

    effects: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    transitions: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def lock_key(identity: str) -> int:
    """A signed 64-bit advisory-lock key for a message identity."""
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big", signed=True)


def _identities(event: Event) -> list[str]:
    if isinstance(event, Submitted):
        ids = [f"m:{event.message_id}", f"r:{event.provider}:{event.provider_message_id}"]
        ids += [f"r:{event.provider}:{p}" for p in event.part_provider_message_ids]
        return ids
    if isinstance(event, StatusReport):
        ids = []
        if event.message_id:
            ids.append(f"m:{event.message_id}")
        if event.provider and event.provider_message_id:
            ids.append(f"r:{event.provider}:{event.provider_message_id}")
        return ids
    return []


SQL_LOCK: Final = "select pg_advisory_xact_lock(k) from unnest($1::bigint[]) as k"
SQL_SEEN: Final = "select event_id from message_events where event_id = any($1::text[])"

#: ``on conflict do nothing`` is the trigger of migration 010: a message whose id is already in
#: ``message_keys`` (in any month) is not inserted, so a submission seen before creates nothing.
SQL_INSERT_MESSAGES: Final = """
insert into messages (message_id, account_id, channel, customer_message_id, provider, provider_message_id,
                      destination, sender, campaign_id, parts, status, status_rank, description,
                      submitted_at, sent_at)
select v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, v->>6, v->>7, v->>8, (v->>9)::smallint,
       'SENT', 1, 'Message sent, awaiting carrier receipt', (v->>10)::timestamptz, (v->>10)::timestamptz
from jsonb_array_elements($1::text::jsonb) as v
on conflict do nothing
returning message_id
"""

SQL_INSERT_REFS: Final = """
insert into message_refs (provider, provider_message_id, message_id, part)
select v->>0, v->>1, v->>2, (v->>3)::smallint from jsonb_array_elements($1::text::jsonb) as v
on conflict do nothing
"""

SQL_INSERT_INBOUND: Final = """
insert into inbound_messages (event_id, account_id, channel, source, destination, text, message_type,
                              provider, provider_message_id, media, occurred_at)
select v.event_id, coalesce(v.account_id, sa.account_id), v.channel, v.source, v.destination, v.text,
       v.message_type, v.provider, v.provider_message_id, v.media::jsonb, v.occurred_at
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::timestamptz[])
     as v(event_id, account_id, channel, source, destination, text, message_type, provider,
          provider_message_id, media, occurred_at)
left join sender_addresses sa on sa.channel = v.channel and sa.address = v.destination
on conflict (event_id) do nothing
returning event_id, account_id
"""

#: Inbound messages routed to an account join (or open) their conversation: unread +n, preview and time of
#: the newest, the WhatsApp window restarts, an archived conversation comes back.
SQL_CONVERSATIONS: Final = """
with v as (
    select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::timestamptz[])
        as v(event_id, account_id, channel, source, destination, text, message_type, media, occurred_at)
), agg as (
    select account_id, channel, source, max(destination) as destination, count(*) as n,
           max(occurred_at) as last_at, (array_agg(text order by occurred_at desc))[1] as preview
    from v group by account_id, channel, source
), up as (
    insert into conversations as c (account_id, channel, contact, our_address, unread, last_message_preview,
                                    last_message_at, last_inbound_at)
    select account_id, channel, source, destination, n, preview, last_at, last_at from agg
    on conflict (account_id, channel, contact) do update set
        unread = c.unread + excluded.unread,
        last_message_preview = case when excluded.last_message_at >= coalesce(c.last_message_at, '-infinity')
                                    then excluded.last_message_preview else c.last_message_preview end,
        last_message_at = greatest(c.last_message_at, excluded.last_message_at),
        last_inbound_at = greatest(c.last_inbound_at, excluded.last_inbound_at),
        our_address = excluded.our_address, archived = false, updated_at = now()
    returning chat_id, account_id, channel, contact
)
insert into conversation_messages (chat_id, direction, event_id, text, message_type, media, occurred_at)
select up.chat_id, 'INBOUND', v.event_id, v.text, v.message_type, v.media::jsonb, v.occurred_at
from v join up on up.account_id = v.account_id and up.channel = v.channel and up.contact = v.source
order by v.occurred_at, v.event_id
on conflict do nothing
"""

SQL_EXISTING_MESSAGES: Final = "select message_id from message_keys where message_id = any($1::text[])"

#: The batch's keys drive a nested loop of primary-key probes: ``offset 0`` keeps the lateral subquery
#: from being flattened into a join the planner may hash, reading the whole table for every batch (it did at
#: ~50k rows, see benchmarks/README.md, "Projector: profile and EXPLAIN (session 3)").
SQL_REFS: Final = """
select r.provider, r.provider_message_id, r.message_id, r.part
from unnest($1::text[], $2::text[]) as v(provider, provider_message_id)
cross join lateral (select r.provider, r.provider_message_id, r.message_id, r.part from message_refs r
                    where r.provider = v.provider and r.provider_message_id = v.provider_message_id offset 0) r
"""

SQL_ORPHANS: Final = """
select e.event_id, e.payload, e.via, e.received_at
from message_events e
where e.message_id is null and e.type = 'message.status'
  and (e.ref_message_id = any($1::text[])
       or (e.provider, e.provider_message_id) in
          (select * from unnest($2::text[], $3::text[]) as v(provider, provider_message_id)))
"""

#: Through ``message_keys``, so each lookup reads the one month its message lives in; one probe per id, in
#: the order given (sorted: rows are locked in message id order), never a join over the table (see SQL_REFS).
SQL_LOAD_STATE: Final = """
select m.* from unnest($1::text[]) as v(message_id)
cross join lateral (select k.submitted_at from message_keys k where k.message_id = v.message_id offset 0) k
cross join lateral (
    select m.message_id, m.account_id, m.channel, m.customer_message_id, m.destination, m.campaign_id, m.parts,
           m.status, m.description, m.error_code, m.error_message, m.failed_after_delivery, m.delivered_at,
           m.read_at, m.failed_at, m.submitted_at
    from messages m where m.message_id = v.message_id and m.submitted_at = k.submitted_at
    offset 0 for update
) m
"""

SQL_LOAD_PARTS: Final = "select message_id, part, status from message_parts where message_id = any($1::text[])"

SQL_UPDATE_MESSAGES: Final = """
update messages m set status = v.status, status_rank = v.status_rank, description = v.description,
       error_code = v.error_code, error_message = v.error_message,
       failed_after_delivery = v.failed_after_delivery, delivered_at = v.delivered_at, read_at = v.read_at,
       failed_at = v.failed_at, updated_at = now()
from (select j->>0 as message_id, j->>1 as status, (j->>2)::smallint as status_rank, j->>3 as description,
             j->>4 as error_code, j->>5 as error_message, (j->>6)::bool as failed_after_delivery,
             (j->>7)::timestamptz as delivered_at, (j->>8)::timestamptz as read_at,
             (j->>9)::timestamptz as failed_at, (j->>10)::timestamptz as submitted_at
      from jsonb_array_elements($1::text::jsonb) as j) as v
where m.message_id = v.message_id and m.submitted_at = v.submitted_at and m.status_rank <= v.status_rank
"""

SQL_UPSERT_PARTS: Final = """
insert into message_parts (message_id, part, status, status_rank)
select * from unnest($1::text[], $2::smallint[], $3::text[], $4::smallint[])
on conflict (message_id, part) do update set status = excluded.status, status_rank = excluded.status_rank,
       updated_at = now()
where message_parts.status_rank < excluded.status_rank
"""

SQL_INSERT_HISTORY: Final = """
insert into message_events (event_id, type, message_id, ref_message_id, provider, provider_message_id,
                            account_id, status, raw_status, part, effect, via, occurred_at, received_at, payload)
select v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, v->>6, v->>7, v->>8, (v->>9)::smallint, v->>10, v->>11,
       (v->>12)::timestamptz, (v->>13)::timestamptz, v->14
from jsonb_array_elements($1::text::jsonb) as v
on conflict (event_id) do nothing
"""

SQL_RESOLVE_ORPHANS: Final = """
update message_events e set message_id = v.message_id, effect = v.effect
from unnest($1::text[], $2::text[], $3::text[]) as v(event_id, message_id, effect)
where e.event_id = v.event_id
"""

SQL_CAMPAIGN_COUNTERS: Final = """
insert into campaign_counters (campaign_id, hour, status, count)
select * from unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[])
on conflict (campaign_id, hour, status) do update set count = campaign_counters.count + excluded.count
"""

#: Also deletes the rows of earlier transitions the projector has since produced from memory and had
#: acknowledged (``$4``; rows another relay holds are left to it): see projector/outbox.py.
SQL_OUTBOX: Final = """
with forgotten as (
    delete from status_outbox where id in
        (select id from status_outbox where change_id = any($3::text[]) for update skip locked)
)
insert into status_outbox (change_id, topic, payload, writer)
select v->>'id', $2, v, $4 from jsonb_array_elements($1::text::jsonb) as v
on conflict (change_id) do nothing
"""


@dataclasses.dataclass(slots=True)
class _Row:
    """A history row to insert."""

    incoming: Incoming
    message_id: str | None
    effect: Effect
    part: int | None = None


async def apply_batch(conn: Conn, batch: Sequence[Incoming], *, status_topic: str,
                      relayed: Sequence[str] = (), writer: str | None = None) -> BatchResult:
    """Apply ``batch`` in one transaction; replaying a batch (or any part of it) changes nothing.

    Transitions are queued in the outbox for ``status_topic``, marked as written by ``writer`` (see
    projector/outbox.py); the outbox rows of ``relayed`` (change ids already acknowledged by Kafka) are deleted
    in the same transaction.
    """
    result = BatchResult()
    unique: dict[str, Incoming] = {}
    for inc in batch:
        unique.setdefault(inc.event.id, inc)
    async with conn.transaction():
        keys = sorted({lock_key(i) for inc in unique.values() for i in _identities(inc.event)})
        if keys:
            await conn.execute(SQL_LOCK, keys)
        seen = {r["event_id"] for r in await conn.fetch(SQL_SEEN, list(unique))}
        fresh = [inc for eid, inc in sorted(unique.items()) if eid not in seen]
        for inc in unique.values():
            if inc.event.id in seen:
                result.effects[(inc.event.type, "duplicate")] += 1
        result.effects[("batch", "duplicate_in_batch")] += len(batch) - len(unique)

        submissions = [inc for inc in fresh if isinstance(inc.event, Submitted)]
        reports = [inc for inc in fresh if isinstance(inc.event, StatusReport)]
        inbound = [inc for inc in fresh if isinstance(inc.event, Inbound)]
        new_subs = [ev for ev in (inc.event for inc in submissions) if isinstance(ev, Submitted)]
        rows: list[_Row] = [_Row(inc, ev.message_id, Effect.SUBMITTED) for inc, ev in zip(submissions, new_subs,
                                                                                           strict=True)]

        created = await _insert_submissions(conn, new_subs)
        counters: collections.Counter[tuple[str, dt.datetime, str]] = collections.Counter()
        # Once per created message, even when a sender retried its submission under a new event id.
        for sub in {s.message_id: s for s in reversed(new_subs)}.values():
            if sub.campaign_id and sub.message_id in created:
                counters[(sub.campaign_id, _hour(sub.occurred_at), DeliveryStatus.SENT.value)] += 1
        if inbound:
            result.transitions.extend(await _insert_inbound(conn, inbound))
            rows.extend(_Row(inc, None, Effect.INBOUND) for inc in inbound)

        # Receipts to apply: this batch's, plus orphans waiting for a message created in this batch.
        orphans = await _orphans_for(conn, [ev for ev in new_subs if ev.message_id in created])
        targets = await _resolve(conn, [ev for inc in (*reports, *orphans)
                                        if isinstance(ev := inc.event, StatusReport)])

        states = await _load_states(conn, sorted({mid for mid, _ in targets.values()}))
        orphan_ids = {o.event.id for o in orphans}
        orphan_updates: list[tuple[str, str, str]] = []
        changed: set[str] = set()
        changed_at = _iso(dt.datetime.now(dt.UTC))
        for inc in [*orphans, *reports]:
            ev = inc.event
            assert isinstance(ev, StatusReport)
            target = targets.get(ev.id)
            if target is None or target[0] not in states:
                if ev.id in orphan_ids:
                    continue
                rows.append(_Row(inc, None, Effect.ORPHANED))
                result.effects[(ev.type, Effect.ORPHANED.value)] += 1
                continue
            message_id, ref_part = target
            state, info = states[message_id]
            effect, transition = apply_report(state, ev, ev.part if ev.part is not None else ref_part)
            changed.add(message_id)
            result.effects[(ev.type, effect.value)] += 1
            if ev.id in orphan_ids:
                orphan_updates.append((ev.id, message_id, effect.value))
            else:
                rows.append(_Row(inc, message_id, effect, ev.part if ev.part is not None else ref_part))
            if transition is not None:
                result.transitions.append(_change_payload(transition, state, info, changed_at))
                if info["campaign_id"]:
                    hour = _hour(info["submitted_at"])
                    counters[(info["campaign_id"], hour, transition.previous.value)] -= 1
                    counters[(info["campaign_id"], hour, transition.status.value)] += 1

        await _write_states(conn, [states[m] for m in sorted(changed)])
        await _insert_history(conn, rows)
        if orphan_updates:
            await conn.execute(SQL_RESOLVE_ORPHANS, *map(list, zip(*orphan_updates, strict=True)))
        moved = [(c, h, s, n) for (c, h, s), n in sorted(counters.items()) if n]
        if moved:
            await conn.execute(SQL_CAMPAIGN_COUNTERS, *map(list, zip(*moved, strict=True)))
        if result.transitions or relayed:
            await conn.execute(SQL_OUTBOX, _rows(result.transitions), status_topic, list(relayed), writer)
        for inc in submissions:
            result.effects[(inc.event.type, "submitted")] += 1
        for inc in inbound:
            result.effects[(inc.event.type, "inbound")] += 1
    return result


async def _insert_submissions(conn: Conn, evs: list[Submitted]) -> set[str]:
    if not evs:
        return set()
    created = await conn.fetch(SQL_INSERT_MESSAGES, _rows([
        (e.message_id, e.account_id, e.channel.value, e.customer_message_id, e.provider, e.provider_message_id,
         e.destination, e.sender, e.campaign_id, e.parts, e.occurred_at) for e in evs]))
    refs: list[tuple[str, str, str, int | None]] = []
    for e in evs:
        refs.append((e.provider, e.provider_message_id, e.message_id, 1 if e.parts > 1 else None))
        refs.extend((e.provider, p, e.message_id, n) for n, p in enumerate(e.part_provider_message_ids, start=2))
    await conn.execute(SQL_INSERT_REFS, _rows(refs))
    return {r["message_id"] for r in created}


async def _insert_inbound(conn: Conn, items: list[Incoming]) -> list[dict[str, Any]]:
    """Store inbound messages; return the change records of those routed to an account."""
    evs = [ev for ev in (i.event for i in items) if isinstance(ev, Inbound)]
    rows = await conn.fetch(
        SQL_INSERT_INBOUND,
        [e.id for e in evs], [e.account_id for e in evs], [e.channel.value for e in evs],
        [e.source for e in evs], [e.destination for e in evs], [e.text for e in evs],
        [e.message_type for e in evs], [e.provider for e in evs], [e.provider_message_id for e in evs],
        # As text: asyncpg would read a list-valued jsonb[] element as another array dimension.
        [orjson.dumps([dict(m) for m in e.media]).decode() for e in evs], [e.occurred_at for e in evs],
    )
    routed = {r["event_id"]: r["account_id"] for r in rows if r["account_id"]}
    conv = [e for e in evs if e.id in routed]
    if conv:
        await conn.execute(
            SQL_CONVERSATIONS, [e.id for e in conv], [routed[e.id] for e in conv], [e.channel.value for e in conv],
            [e.source for e in conv], [e.destination for e in conv], [e.text for e in conv],
            [e.message_type for e in conv], [orjson.dumps([dict(m) for m in e.media]).decode() for e in conv],
            [e.occurred_at for e in conv],
        )
    now = _iso(dt.datetime.now(dt.UTC))
    return [
        {"id": f"inbound:{e.id}", "kind": "inbound", "messageId": e.id, "accountId": routed[e.id],
         "channel": e.channel.value, "source": e.source, "destination": e.destination, "text": e.text,
         "messageType": e.message_type, "occurredAt": _iso(e.occurred_at), "changedAt": now}
        for e in evs if e.id in routed
    ]


def _hour(t: dt.datetime) -> dt.datetime:
    """The statistics bucket of a message: its submission hour (UTC)."""
    return t.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def _orphans_for(conn: Conn, subs: list[Submitted]) -> list[Incoming]:
    if not subs:
        return []
    providers: list[str] = []
    pmids: list[str] = []
    for s in subs:
        for p in (s.provider_message_id, *s.part_provider_message_ids):
            providers.append(s.provider)
            pmids.append(p)
    out = []
    for r in await conn.fetch(SQL_ORPHANS, [s.message_id for s in subs], providers, pmids):
        ev = parse_event(r["payload"])
        out.append(Incoming(ev, r["via"], r["received_at"]))
    return out


async def _resolve(conn: Conn, reports: list[StatusReport]) -> dict[str, tuple[str, int | None]]:
    """event id -> (message id, part implied by the provider id it was sent to)."""
    out: dict[str, tuple[str, int | None]] = {}
    by_id = [r for r in reports if r.message_id]
    if by_id:
        existing = {
            r["message_id"]
            for r in await conn.fetch(SQL_EXISTING_MESSAGES, sorted({r.message_id for r in by_id}))  # type: ignore[type-var]  # -- filtered non-None
        }
        for r in by_id:
            if r.message_id in existing:
                out[r.id] = (r.message_id, None)  # type: ignore[assignment]  # -- filtered non-None
    by_ref = [r for r in reports if r.id not in out and r.provider and r.provider_message_id]
    if by_ref:
        refs = {
            (row["provider"], row["provider_message_id"]): (row["message_id"], row["part"])
            for row in await conn.fetch(
                SQL_REFS, [r.provider for r in by_ref], [r.provider_message_id for r in by_ref]
            )
        }
        for r in by_ref:
            hit = refs.get((r.provider or "", r.provider_message_id or ""))
            if hit is not None:
                out[r.id] = hit
    return out


async def _load_states(
    conn: Conn, message_ids: list[str]
) -> dict[str, tuple[MessageState, asyncpg.Record]]:
    if not message_ids:
        return {}
    states: dict[str, tuple[MessageState, asyncpg.Record]] = {}
    for r in await conn.fetch(SQL_LOAD_STATE, message_ids):
        states[r["message_id"]] = (
            MessageState(
                message_id=r["message_id"],
                status=DeliveryStatus(r["status"]),
                parts=r["parts"],
                description=r["description"],
                error_code=r["error_code"],
                error_message=r["error_message"],
                failed_after_delivery=r["failed_after_delivery"],
                delivered_at=r["delivered_at"],
                read_at=r["read_at"],
                failed_at=r["failed_at"],
            ),
            r,
        )
    multipart = [m for m, (s, _) in states.items() if s.parts > 1]
    if multipart:
        for r in await conn.fetch(SQL_LOAD_PARTS, multipart):
            states[r["message_id"]][0].part_status[r["part"]] = DeliveryStatus(r["status"])
    return states


async def _write_states(conn: Conn, loaded: list[tuple[MessageState, asyncpg.Record]]) -> None:
    if not loaded:
        return
    states = [s for s, _ in loaded]
    await conn.execute(SQL_UPDATE_MESSAGES, _rows([
        (s.message_id, s.status.value, s.status.rank, s.description, s.error_code, s.error_message,
         s.failed_after_delivery, s.delivered_at, s.read_at, s.failed_at, info["submitted_at"])
        for s, info in loaded]))
    parts = [(s.message_id, p, st.value, st.rank) for s in states for p, st in sorted(s.part_status.items())]
    if parts:
        await conn.execute(SQL_UPSERT_PARTS, *map(list, zip(*parts, strict=True)))


async def _insert_history(conn: Conn, rows: list[_Row]) -> None:
    if not rows:
        return
    values = []
    for row in rows:
        ev = row.incoming.event
        report = ev if isinstance(ev, StatusReport) else None
        values.append((
            ev.id, ev.type, row.message_id,
            getattr(ev, "message_id", None), getattr(ev, "provider", None),
            getattr(ev, "provider_message_id", None), getattr(ev, "account_id", None),
            report.status.value if report else None, report.raw_status if report else None,
            row.part, row.effect.value, row.incoming.via, ev.occurred_at, row.incoming.received_at,
            row.incoming.payload if row.incoming.payload is not None else to_json(ev),
        ))
    await conn.execute(SQL_INSERT_HISTORY, _rows(values))


def _rows(rows: Sequence[object]) -> str:
    """Rows as one JSON array (of arrays or objects) for ``jsonb_array_elements``; datetimes as RFC 3339 with
    microseconds and offset (a naive one taken as UTC), read back exactly by ``::timestamptz``."""
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()


def _change_payload(t: Transition, state: MessageState, info: asyncpg.Record, changed_at: str) -> dict[str, Any]:
    """The record produced to ``qlara.status-changes`` (the dispatcher's input)."""
    payload: dict[str, Any] = {
        "id": f"{t.message_id}:{t.status.value}",
        "messageId": t.message_id,
        "customerMessageId": info["customer_message_id"],
        "accountId": info["account_id"],
        "channel": info["channel"],
        "destination": info["destination"],
        "campaignId": info["campaign_id"],
        "status": t.status.value,
        "previousStatus": t.previous.value,
        "statusCode": t.status.code,
        "description": state.description,
        "occurredAt": _iso(t.occurred_at),
        "changedAt": changed_at,
        "eventId": t.event_id,
    }
    if state.status.is_failure and state.error_code:
        payload["error"] = {"code": state.error_code, "message": state.error_message}
    return payload
