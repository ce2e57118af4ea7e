"""Exact accounting after a scenario: history, final statuses, partner deliveries, consumer lag.

Every figure is computed from the stores themselves (``message_events``, ``messages``, ``webhook_deliveries``,
the receiver's log, Kafka's committed offsets), never from the service's own metrics.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from chaos.load import Message


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One request the partner receiver recorded."""

    token: str
    webhook_id: str
    message_id: str
    status: str
    at: float


class ReceiverLog:
    """Tails the receiver's JSON-lines file; keeps every delivery by token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.by_token: dict[str, list[Delivery]] = collections.defaultdict(list)

    def poll(self) -> list[Delivery]:
        """Read what was appended since the last call; return the new deliveries."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        new = []
        for line in lines:
            if not line:
                continue
            rec = orjson.loads(line)
            body = orjson.loads(rec["body"])
            d = Delivery(rec["token"], rec["webhookId"] or "", body.get("messageId", ""),
                         body.get("deliveryStatus", body.get("eventType", "")), rec["at"])
            self.by_token[d.token].append(d)
            new.append(d)
        return new


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-audit", request_timeout_ms=5000)
    try:
        await admin.start()
        meta = await admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in meta[0]["partitions"]]
    finally:
        await admin.close()


async def consumer_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Sum over partitions of (end offset - committed offset) for ``group`` on ``topic``; None if unreachable."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-lag", request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="chaos-lag",
                                enable_auto_commit=False, request_timeout_ms=5000)
    try:
        await admin.start()
        await consumer.start()
        meta = await admin.describe_topics([topic])
        parts = [TopicPartition(topic, p["partition"]) for p in meta[0]["partitions"]]
        if not parts:
            return None
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)
        ends = await consumer.end_offsets(parts)
        return int(sum(max(ends[tp] - max(committed[tp].offset if tp in committed else 0, 0), 0) for tp in parts))
    except (KafkaError, OSError, TimeoutError, KeyError, IndexError):
        return None
    finally:
        await consumer.stop()
        await admin.close()


async def ids_in_topic(bootstrap: str, topic: str, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` (event ids) are in ``topic``, read from the beginning up to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, client_id="chaos-audit",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    found: set[str] = set()
    await consumer.start()
    try:
        parts = await _partitions(bootstrap, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind():
            for recs in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                for r in recs:
                    value = orjson.loads(r.value)
                    for ev in value if isinstance(value, list) else [value]:
                        if ev.get("id") in wanted:
                            found.add(ev["id"])
    finally:
        await consumer.stop()
    return found


@dataclasses.dataclass
class Accounting:
    """The outcome of one scenario; ``failures`` lists every broken guarantee in words."""

    messages: int = 0
    events_sent: int = 0
    events_acknowledged: int = 0
    events_unacknowledged: int = 0
    lost: int = 0
    #: Acknowledged, missing from history, but still in Kafka (not lost: not yet projected).
    unprojected: int = 0
    history_rows: int = 0
    duplicated_in_history: int = 0
    extra_in_history: int = 0
    status_mismatches: int = 0
    status_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    webhooks_expected: int = 0
    webhooks_received: int = 0
    webhooks_missing: int = 0
    duplicate_webhooks: int = 0
    duplicates_with_new_id: int = 0
    webhook_states: dict[str, int] = dataclasses.field(default_factory=dict)
    lag_projector: int | None = None
    lag_dispatcher: int | None = None
    failures: list[str] = dataclasses.field(default_factory=list)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return dataclasses.asdict(self)


async def account(pool: asyncpg.Pool, *, account_ids: Sequence[str], messages: Sequence[Message],
                  deliveries: Sequence[Delivery], lag_projector: int | None, lag_dispatcher: int | None,
                  bootstrap: str, topic: str) -> Accounting:
    """Compare what the generator got acknowledged with what the stores and the partner hold."""
    a = Accounting(messages=len(messages), lag_projector=lag_projector, lag_dispatcher=lag_dispatcher)
    sent: list[str] = []
    acked: set[str] = set()
    for m in messages:
        sent.append(m.submitted_id)
        if m.submitted_acked_at is not None:
            acked.add(m.submitted_id)
            sent.append(m.delivered_id)
        if m.delivered_acked_at is not None:
            acked.add(m.delivered_id)
    a.events_sent = len(sent)
    a.events_acknowledged = len(acked)
    a.events_unacknowledged = len(sent) - len(acked)

    # History: every acknowledged event exactly once. event_id is the primary key, so the real risk is a
    # logical duplicate: the same (message, type, status) stored under two ids.
    rows = await pool.fetch(
        "select event_id, type, coalesce(message_id, ref_message_id) as mid, coalesce(status, '') as status"
        " from message_events where event_id = any($1::text[])", sent)
    a.history_rows = len(rows)
    stored = collections.Counter(r["event_id"] for r in rows)
    missing = acked - stored.keys()
    in_kafka = await ids_in_topic(bootstrap, topic, missing) if missing else set()
    lost = sorted(missing - in_kafka)
    a.lost = len(lost)
    a.unprojected = len(in_kafka)
    a.extra_in_history = len(stored.keys() - acked)  # produced, but the generator never saw the 2xx
    by_message_id = {m.message_id for m in messages}
    logical = await pool.fetch(
        "select message_id, type, coalesce(status, '') as status, count(*) as n from message_events"
        " where message_id = any($1::text[]) group by 1, 2, 3 having count(*) > 1", list(by_message_id))
    a.duplicated_in_history = sum(r["n"] - 1 for r in logical) + sum(n - 1 for n in stored.values() if n > 1)

    # Final statuses: DELIVERED once its receipt was acknowledged (or, unacknowledged, got in anyway: a 503
    # after the produce), SENT when only the submission was.
    expected = {m.message_id: ("DELIVERED" if m.delivered_acked_at is not None or m.delivered_id in stored else "SENT")
                for m in messages if m.submitted_acked_at is not None}
    actual = {r["message_id"]: r["status"] for r in await pool.fetch(
        "select message_id, status from messages where account_id = any($1::text[])", list(account_ids))}
    a.status_counts = dict(collections.Counter(actual.values()))
    wrong = [f"{mid}: {actual.get(mid)} != {want}" for mid, want in expected.items() if actual.get(mid) != want]
    a.status_mismatches = len(wrong)

    # Partner deliveries: every DELIVERED transition at least once; a duplicate must reuse its webhook-id.
    wanted = {mid for mid, want in expected.items() if want == "DELIVERED"}
    a.webhooks_expected = len(wanted)
    a.webhooks_received = len(deliveries)
    ids: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    count: collections.Counter[tuple[str, str]] = collections.Counter()
    for d in deliveries:
        ids[(d.message_id, d.status)].add(d.webhook_id)
        count[(d.message_id, d.status)] += 1
    got = {mid for (mid, st) in count if st == "DELIVERED"}
    no_webhook = sorted(wanted - got)
    a.webhooks_missing = len(no_webhook)
    a.duplicate_webhooks = sum(n - 1 for n in count.values())
    a.duplicates_with_new_id = sum(len(v) - 1 for v in ids.values())
    a.webhook_states = {r["state"]: r["n"] for r in await pool.fetch(
        "select state, count(*) as n from webhook_deliveries where account_id = any($1::text[]) group by state",
        list(account_ids))}

    if a.lost:
        a.failures.append(f"{a.lost} acknowledged events are neither in message_events nor in Kafka: lost")
        a.examples["lost"] = lost[:10]
    if a.unprojected:
        a.failures.append(f"{a.unprojected} acknowledged events are still only in Kafka (never projected)")
        a.examples["unprojected"] = sorted(in_kafka)[:10]
    if a.duplicated_in_history:
        a.failures.append(f"{a.duplicated_in_history} duplicated rows in message_events")
    if a.status_mismatches:
        a.failures.append(f"{a.status_mismatches} messages end in a status other than the expected one")
        a.examples["status"] = wrong[:10]
    if a.webhooks_missing:
        a.failures.append(f"{a.webhooks_missing} DELIVERED changes never reached the partner")
        # Say where each example stands: acknowledged or not, and its delivery rows (state, attempts, error).
        acked_ids = {m.message_id for m in messages if m.delivered_acked_at is not None}
        rows = await pool.fetch(
            "select message_id, event_type, state, attempts, last_status_code, last_error from webhook_deliveries"
            " where account_id = any($1::text[]) and message_id = any($2::text[])",
            list(account_ids), no_webhook[:10])
        found = collections.defaultdict(list)
        for r in rows:
            found[r["message_id"]].append(f"{r['event_type']} {r['state']} x{r['attempts']}"
                                          f" {r['last_status_code']} {r['last_error']}")
        a.examples["missing_webhooks"] = [
            f"{mid} ({'acked' if mid in acked_ids else 'not acked'}; deliveries: {found.get(mid) or 'none'})"
            for mid in no_webhook[:10]]
    if a.duplicates_with_new_id:
        a.failures.append(f"{a.duplicates_with_new_id} duplicate webhooks carried a different webhook-id")
    if lag_projector != 0 or lag_dispatcher != 0:
        a.failures.append(f"consumer lag did not return to zero (projector {lag_projector},"
                          f" dispatcher {lag_dispatcher})")
    if a.events_acknowledged == 0:
        a.failures.append("no event was acknowledged: the scenario proves nothing")
    return a
