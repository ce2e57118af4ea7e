"""The JSON a partner receives: Qlara's DELIVERY / READ / INBOUND payloads, built from our records.

Pure functions. The bytes returned here are stored once per delivery and sent, byte for byte, on
every attempt, so the signature always covers exactly what is sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from qlara_events.domain.status import DeliveryStatus


def event_type(change: dict[str, Any]) -> str:
    """DELIVERY, READ or INBOUND."""
    if change.get("kind") == "inbound":
        return "INBOUND"
    return "READ" if change.get("status") == DeliveryStatus.READ.value else "DELIVERY"


def status_rank(change: dict[str, Any]) -> int | None:
    """The rank of a status change (None for inbound messages)."""
    if change.get("kind") == "inbound":
        return None
    return DeliveryStatus(change["status"]).rank


def body(change: dict[str, Any]) -> bytes:
    """The exact request body for a change record from ``qlara.status-changes``."""
    kind = event_type(change)
    if kind == "INBOUND":
        payload: dict[str, Any] = {
            "eventType": "INBOUND",
            "messageId": change.get("messageId"),
            "source": change["source"],
            "destination": change["destination"],
            "text": change.get("text", ""),
            "channel": change["channel"],
            "messageType": change.get("messageType", "TEXT"),
            "timestamp": change["occurredAt"],
        }
    else:
        payload = {
            "eventType": kind,
            "messageId": change["messageId"],
            "customerMessageId": change.get("customerMessageId"),
            "destination": change.get("destination"),
            "statusCode": change.get("statusCode"),
            "description": change.get("description"),
            "channel": change.get("channel"),
            "timestamp": change["occurredAt"],
            "deliveryStatus": change["status"],
        }
        if change.get("error"):
            payload["error"] = change["error"]
    return orjson.dumps({k: v for k, v in payload.items() if v is not None})


def delivery_id(change_id: str, webhook_id: str) -> str:
    """The ``webhook-id`` of a change sent to a webhook: stable, so retries and replays share it."""
    return "msg_" + hashlib.sha256(f"{webhook_id}\x00{change_id}".encode()).hexdigest()[:32]
