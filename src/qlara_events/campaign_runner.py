"""The campaign runner (runs with the api role): expands confirmed campaigns into send requests.

Recipients stream in keyset batches of ``BATCH`` (a campaign of a million recipients never sits in memory);
each batch is produced to ``qlara.send-requests`` and acknowledged before the resume point is saved, so a
runner that dies resumes where it stopped. Message ids are derived from (campaign, recipient), so a batch
produced twice carries the same ids and the upstream senders deduplicate it. Campaigns whose messages are
all final, or whose deadline passed, move to status 3; a campaign that cannot be expanded moves to 4.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any, Final

import asyncpg

from qlara_events.config import Settings
from qlara_events.domain import campaigns as rules
from qlara_events.errors import Unavailable
from qlara_events.ingress.publisher import Publisher
from qlara_events.jobs import claim_loop
from qlara_events.logs import get_logger
from qlara_events.store import campaigns as store

log = get_logger("campaigns")

BATCH: Final = 1000
LEASE_S: Final = 120.0
POLL_S: Final = 0.5
MAX_ATTEMPTS: Final = 20
_NAMESPACE: Final = uuid.UUID("6f1c7c1e-2b7a-4c55-9a53-5a1f0e0c2a11")


def message_id(campaign_id: int, recipient: str) -> str:
    """A stable message id per (campaign, recipient)."""
    return str(uuid.uuid5(_NAMESPACE, f"{campaign_id}/{recipient}"))


def send_request(c: asyncpg.Record, destination: str, contact: dict[str, Any], now: str) -> dict[str, Any]:
    """The send request of one recipient."""
    channels = rules.SENDING_MODES[c["sending_mode"]]
    mid = message_id(c["campaign_id"], destination)
    req: dict[str, Any] = {
        "type": "send.request", "id": mid, "messageId": mid, "customerMessageId": f"cmp-{c['campaign_id']}-{mid[:8]}",
        "accountId": c["account_id"], "campaignId": str(c["campaign_id"]), "channel": channels[0],
        "fallbackChannels": list(channels[1:]), "destination": destination, "origin": "campaign",
        "requestedAt": now,
    }
    if "SMS" in channels:
        req["sms"] = {"sender": c["sms_sender"], "text": rules.render(c["sms_body"] or "", contact)}
    if "RCS" in channels:
        req["rcs"] = {"agentId": c["rcs_agent_id"], "templateId": c["rcs_template_id"], "variables": contact}
    if "WHATSAPP" in channels:
        req["whatsapp"] = {"phoneNumberId": c["whatsapp_phone_number_id"], "templateId": c["whatsapp_template_id"],
                           "variables": contact}
    return req


class CampaignRunner:
    """Expands one campaign at a time per process; several processes share the work."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, publisher: Publisher) -> None:
        self._s = settings
        self._pool = pool
        self._publisher = publisher
        self._stopping = asyncio.Event()
        self.wake = asyncio.Event()

    def stop(self) -> None:
        """Stop after the current batch."""
        self._stopping.set()
        self.wake.set()

    async def run(self) -> None:
        """Expand and complete campaigns until stopped."""
        await claim_loop(self._stopping, self.wake, self._claim, self._expand, poll_s=POLL_S, log=log,
                         what="campaign")

    async def _claim(self) -> asyncpg.Record | None:
        for cid in await store.complete_finished(self._pool):
            log.info("campaign_completed", campaign_id=cid)
        return await store.claim(self._pool, LEASE_S, self._s.campaign_deadline_s)

    async def _expand(self, c: asyncpg.Record) -> None:
        if c["expansion_attempts"] > MAX_ATTEMPTS:
            await store.fail(self._pool, c["campaign_id"], "could not hand the messages to the senders")
            return
        expanded = c["expanded"]
        cursor = c["expansion_cursor"] or "0"
        topic = self._s.topics.send_requests
        # The confirmation reserved credit for total_destinations recipients: never send to more, however much
        # the lists grew since (the members after that many, in contact-id order, are not sent to).
        cap = int(c["total_destinations"] or 0)
        try:
            while not self._stopping.is_set():
                now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
                take = max(0, min(BATCH, cap - expanded))
                contact_ids: list[int] = []  # the batch's contacts (a list campaign's), to mark as contacted
                if take == 0:
                    batch: list[tuple[str, dict[str, Any]]] = []
                    next_cursor = cursor
                elif c["destination_type"] == 1:
                    rows = await store.recipients_after(self._pool, c["account_id"], list(c["contact_list_ids"]),
                                                        int(cursor), take)
                    batch = [(r["phone_number"], {
                        "firstName": r["first_name"], "lastName": r["last_name"], "fullName": r["full_name"],
                        "phoneNumber": r["phone_number"], "email": r["email"], "customFields": r["custom_fields"],
                    }) for r in rows]
                    next_cursor = str(rows[-1]["contact_id"]) if rows else cursor
                    contact_ids = [r["contact_id"] for r in rows]
                else:
                    start = int(cursor)
                    dests = list(c["destinations"])[start:start + take]
                    batch = [(d, {"phoneNumber": d}) for d in dests]
                    next_cursor = str(start + len(dests))
                requests = [send_request(c, dest, contact, now) for dest, contact in batch]
                await self._publisher.produce_many(topic, [(r["messageId"], r) for r in requests])
                await store.mark_contacted(self._pool, c["account_id"], contact_ids,
                                           rules.SENDING_MODES[c["sending_mode"]][0], c["sending_mode"])
                expanded += len(batch)
                done = len(batch) < take or expanded >= cap
                await store.progress(self._pool, c["campaign_id"], expanded, next_cursor, done, LEASE_S)
                cursor = next_cursor
                if done:
                    log.info("campaign_expanded", campaign_id=c["campaign_id"], messages=expanded)
                    return
        except (Unavailable, asyncpg.PostgresError, OSError) as exc:
            # The lease expires and a runner (this one or another) resumes from the saved cursor.
            log.warning("campaign_expansion_interrupted", campaign_id=c["campaign_id"], error=repr(exc))
