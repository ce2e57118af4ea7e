"""``baseline_minimal`` of ``projector_drain``: the least code that writes the projector's rows.

It consumes the same pre-filled topic and writes, per batch of up to 1,000 records and in one transaction,
what the projector writes for submissions and their DELIVERED receipts, into the same migrated tables (same
indexes, partitions and the ``message_keys`` trigger): the ``messages`` rows, their ``message_refs``, every
event in ``message_events`` with its payload, the DELIVERED update, and one ``status_outbox`` row per
transition. After the commit it produces the transitions to the status topic, commits the offsets, and
deletes those outbox rows in the next transaction, as the projector does.

What it leaves out is our code: no domain parsing or validation, no advisory locks, no duplicate, ordering,
orphan, multi-part or campaign handling, no metrics. The projector's rate against this one is the cost of
that code; this one's rate against COPY is the cost of the schema.

Run by projector_drain as its own process:
``python -m benchmarks.minimal_projector TOPIC STATUS_TOPIC GROUP DATABASE_URL TOTAL``.
"""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from qlara_events.store.projection import SQL_INSERT_HISTORY, SQL_INSERT_MESSAGES, SQL_INSERT_REFS

KAFKA = "127.0.0.1:9092"
BATCH = 1000
#: Stop whatever happens after this long (the scenario's own cap is shorter).
MAX_S = 900.0

SQL_DELIVERED = """
update messages m set status = 'DELIVERED', status_rank = 3, description = 'Message delivered',
       delivered_at = v.at, updated_at = now()
from (select r.message_id, r.provider_message_id, k.submitted_at, (j->>2)::timestamptz as at
      from jsonb_array_elements($1::text::jsonb) as j
      join message_refs r on r.provider = j->>0 and r.provider_message_id = j->>1
      join message_keys k on k.message_id = r.message_id) as v
where m.message_id = v.message_id and m.submitted_at = v.submitted_at and m.status_rank < 3
returning m.message_id, m.account_id, m.channel, v.provider_message_id
"""
SQL_OUTBOX = """
insert into status_outbox (change_id, topic, payload)
select v->>'id', $2, v from jsonb_array_elements($1::text::jsonb) as v
on conflict (change_id) do nothing
"""
SQL_FORGET = "delete from status_outbox where change_id = any($1::text[])"


async def drain(topic: str, status_topic: str, group: str, database_url: str, total: int) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=BATCH)
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=2,
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    relayed: list[str] = []
    done = 0
    deadline = time.monotonic() + MAX_S
    try:
        while done < total and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            records = [r for recs in batch.values() for r in recs]
            if not records:
                continue
            messages, refs, receipts, history = [], [], [], []
            for rec in records:
                ev = orjson.loads(rec.value)
                if ev["type"] == "message.submitted":
                    messages.append([ev["messageId"], ev["accountId"], ev["channel"], ev.get("customerMessageId"),
                                     ev["provider"], ev["providerMessageId"], ev.get("destination"), None, None, 1,
                                     ev["occurredAt"]])
                    refs.append([ev["provider"], ev["providerMessageId"], ev["messageId"], 0])
                    history.append([ev["id"], ev["type"], ev["messageId"], None, ev["provider"],
                                    ev["providerMessageId"], ev["accountId"], "SENT", None, None, "applied", "bench",
                                    ev["occurredAt"], ev["occurredAt"], ev])
                else:
                    receipts.append(ev)
            async with pool.acquire() as conn, conn.transaction():
                if relayed:
                    await conn.execute(SQL_FORGET, relayed)
                inserted = await conn.fetch(SQL_INSERT_MESSAGES, orjson.dumps(messages).decode()) if messages else []
                if refs:
                    await conn.execute(SQL_INSERT_REFS, orjson.dumps(refs).decode())
                updated = await conn.fetch(SQL_DELIVERED, orjson.dumps(
                    [[ev["provider"], ev["providerMessageId"], ev["occurredAt"]] for ev in receipts]).decode()) \
                    if receipts else []
                # A receipt's history row names its message, as the projector's does (timeline index entries).
                owner = {r["provider_message_id"]: (r["message_id"], r["account_id"]) for r in updated}
                for ev in receipts:
                    mid, account = owner.get(ev["providerMessageId"], (None, None))
                    history.append([ev["id"], ev["type"], mid, None, ev["provider"], ev["providerMessageId"],
                                    account, ev["status"], ev.get("rawStatus"), None, "applied", "bench",
                                    ev["occurredAt"], ev["occurredAt"], ev])
                await conn.execute(SQL_INSERT_HISTORY, orjson.dumps(history).decode())
                changes = [{"id": f"chg-{r['message_id']}-SENT", "messageId": r["message_id"], "status": "SENT"}
                           for r in inserted]
                changes += [{"id": f"chg-{r['message_id']}-DELIVERED", "messageId": r["message_id"],
                             "accountId": r["account_id"], "channel": r["channel"], "status": "DELIVERED"}
                            for r in updated]
                if changes:
                    await conn.execute(SQL_OUTBOX, orjson.dumps(changes).decode(), status_topic)
            futures = [await producer.send(status_topic, orjson.dumps(c), key=c["messageId"].encode())
                       for c in changes]
            await asyncio.gather(*futures)
            relayed = [c["id"] for c in changes]
            await consumer.commit()
            done += len(records)
        # Stay (connections open) until the scenario has read this process's and its backend's CPU and
        # terminates it: a process that exited reads as no CPU at all.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    topic_arg, status_arg, group_arg, url_arg, total_arg = sys.argv[1:6]
    asyncio.run(drain(topic_arg, status_arg, group_arg, url_arg, int(total_arg)))
