"""Infobip delivery and seen reports (JSON ``{"results": [...]}``, shared-token authentication).

Status group → Qlara status:

=====================================  ===========  ===============================================
status                                 Qlara        note
=====================================  ===========  ===============================================
group 1 PENDING (any id)               SENT
group 3, id 2 DELIVERED_TO_OPERATOR    RECEIVED     intermediate despite its group: a carrier ack
group 3, id 5 DELIVERED_TO_HANDSET     DELIVERED    the real delivery
group 3, another id                    by ``name``  DELIVERED_TO_HANDSET → DELIVERED, else RECEIVED
group 2 UNDELIVERABLE                  ERROR
group 4 EXPIRED                        EXPIRED
group 5 REJECTED                       ERROR
any other group                        UNKNOWN      kept in history, never moves the projection
report with ``seenAt``                 READ         WhatsApp "seen"; ``rawStatus`` SEEN
=====================================  ===========  ===============================================

An ``error`` whose ``id`` is not 0 becomes the event error (Infobip says whether it is ``permanent``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from qlara_events.domain.events import Event, EventError, StatusReport
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    as_list,
    as_object,
    basic_auth_password,
    clip,
    opt_int,
    opt_str,
    parse_iso,
    received,
    require_id,
    status_event,
)
from qlara_events.providers.base import OK, Callback, Reply, constant_time_equals

GROUPS: Final[Mapping[int, DeliveryStatus]] = {
    1: DeliveryStatus.SENT,
    2: DeliveryStatus.ERROR,
    3: DeliveryStatus.DELIVERED,  # refined by status id below
    4: DeliveryStatus.EXPIRED,
    5: DeliveryStatus.ERROR,
}
DELIVERED_TO_OPERATOR: Final = 2
DELIVERED_TO_HANDSET: Final = 5


def status_for(group: int, status_id: int | None, name: str | None) -> DeliveryStatus:
    """The Qlara status of an Infobip ``status`` object (see the module table)."""
    if group != 3:
        return GROUPS.get(group, DeliveryStatus.UNKNOWN)
    if status_id == DELIVERED_TO_HANDSET:
        return DeliveryStatus.DELIVERED
    if status_id == DELIVERED_TO_OPERATOR:
        return DeliveryStatus.RECEIVED
    return DeliveryStatus.DELIVERED if name == "DELIVERED_TO_HANDSET" else DeliveryStatus.RECEIVED


class InfobipProvider:
    """Infobip's report dialect."""

    name = "infobip"
    #: Infobip batches reports; 1 MiB holds a thousand of them.
    max_body_bytes = 1024 * 1024

    def __init__(self, *, token: str) -> None:
        self._token = token

    def handshake(self, cb: Callback) -> Reply | None:
        """Infobip has no subscription handshake."""
        return None

    def verify(self, cb: Callback) -> None:
        """Accept the shared token as an HTTP Basic password (any user name) or as ``?token=``."""
        offered = [basic_auth_password(cb.header("Authorization")), cb.query_value("token")]
        candidates = [token for token in offered if token]
        if not candidates:
            raise Unauthorized("missing token")
        # Compare every candidate so the time taken does not reveal which one matched.
        matches = [constant_time_equals(token, self._token) for token in candidates]
        if not any(matches):
            raise Unauthorized("token does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """One status report per entry of ``results``."""
        body = as_object(cb.json(), "body")
        results = as_list(body.get("results"), "results")
        return [
            self._report(cb, as_object(item, f"results[{i}]"), f"results[{i}]")
            for i, item in enumerate(results)
        ]

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Infobip only looks at the status code."""
        return OK

    def _report(self, cb: Callback, report: Mapping[str, Any], where: str) -> StatusReport:
        message_id = require_id(report, "messageId", f"{where}.messageId")
        if report.get("seenAt") is not None:
            return status_event(
                provider=self.name,
                provider_message_id=message_id,
                status=DeliveryStatus.READ,
                raw_status="SEEN",
                occurred_at=parse_iso(report.get("seenAt")) or received(cb),
                id_parts=(message_id, "seen"),
                description="Seen by the recipient",
            )
        status = as_object(report.get("status"), f"{where}.status")
        group = opt_int(status, "groupId")
        if group is None:
            raise InvalidEvent("is required, an integer", field=f"{where}.status.groupId")
        status_id, name = opt_int(status, "id"), opt_str(status, "name")
        return status_event(
            provider=self.name,
            provider_message_id=message_id,
            status=status_for(group, status_id, name),
            raw_status=name or opt_str(status, "groupName") or f"GROUP_{group}",
            occurred_at=parse_iso(report.get("doneAt")) or received(cb),
            id_parts=(message_id, str(status_id) if status_id is not None else f"group{group}"),
            description=opt_str(status, "description"),
            error=_error(report.get("error"), f"{where}.error"),
        )


def _error(value: object, where: str) -> EventError | None:
    """The report's ``error``, unless it is Infobip's ``NO_ERROR`` (id 0)."""
    if value is None:
        return None
    error = as_object(value, where)
    code = opt_int(error, "id")
    if not code:
        return None
    permanent = error.get("permanent")
    return EventError(
        code=str(code),
        message=clip(opt_str(error, "description") or opt_str(error, "name")),
        permanent=permanent if isinstance(permanent, bool) else None,
    )
