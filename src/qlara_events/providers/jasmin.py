"""Jasmin SMS gateway HTTP DLR callbacks (GET query or POST form; ``?token=`` authentication).

Level 1 is the SMSC's answer to the submit, levels 2 and 3 carry the handset receipt's ``stat``:

==============================================  ===========  =======================================
message_status                                  Qlara        note
==============================================  ===========  =======================================
ESME_ROK                                        SENT         the SMSC accepted the submit
any other ESME_*                                ERROR        the SMSC refused it; the code is the error
DELIVRD                                         DELIVERED
ACCEPTD, ENROUTE                                RECEIVED     carrier acknowledged, not yet delivered
EXPIRED                                         EXPIRED
UNDELIV, DELETED, REJECTD                       ERROR
UNKNOWN, or anything else                       UNKNOWN      kept in history only
==============================================  ===========  =======================================

The numeric SMPP ``message_state`` values (1 ENROUTE ... 8 REJECTED) and their long names are accepted too.
When ``message_status`` is missing, the raw receipt text (``id:... stat:... err:...``) in ``text`` or
``short_message`` is parsed instead. Jasmin retries unless the reply body is exactly ``ACK/Jasmin``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from qlara_events.domain.events import Event, EventError
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers._common import (
    params,
    parse_smpp_date,
    received,
    request_params,
    require_id,
    status_event,
)
from qlara_events.providers.base import Callback, Reply, constant_time_equals

STATS: Final[Mapping[str, DeliveryStatus]] = {
    "DELIVRD": DeliveryStatus.DELIVERED,
    "DELIVERED": DeliveryStatus.DELIVERED,
    "ACCEPTD": DeliveryStatus.RECEIVED,
    "ACCEPTED": DeliveryStatus.RECEIVED,
    "ENROUTE": DeliveryStatus.RECEIVED,
    "EXPIRED": DeliveryStatus.EXPIRED,
    "UNDELIV": DeliveryStatus.ERROR,
    "UNDELIVERABLE": DeliveryStatus.ERROR,
    "DELETED": DeliveryStatus.ERROR,
    "REJECTD": DeliveryStatus.ERROR,
    "REJECTED": DeliveryStatus.ERROR,
    "UNKNOWN": DeliveryStatus.UNKNOWN,
}
#: SMPP ``message_state`` TLV values.
MESSAGE_STATES: Final[Mapping[str, str]] = {
    "1": "ENROUTE",
    "2": "DELIVRD",
    "3": "EXPIRED",
    "4": "DELETED",
    "5": "UNDELIV",
    "6": "ACCEPTD",
    "7": "UNKNOWN",
    "8": "REJECTD",
}
ACK: Final = Reply(200, b"ACK/Jasmin")

_RECEIPT_FIELD: Final = re.compile(r"\b(id|sub|dlvrd|submit date|done date|stat|err):(\S*)", re.IGNORECASE)


def status_for(message_status: str) -> DeliveryStatus:
    """The Qlara status of a Jasmin ``message_status`` (see the module table)."""
    word = message_status.upper()
    if word.startswith("ESME_"):
        return DeliveryStatus.SENT if word == "ESME_ROK" else DeliveryStatus.ERROR
    return STATS.get(MESSAGE_STATES.get(word, word), DeliveryStatus.UNKNOWN)


def parse_receipt(text: str) -> dict[str, str]:
    """The fields of an SMPP receipt text (``id:.. sub:.. dlvrd:.. submit date:.. done date:.. stat:..``)."""
    out: dict[str, str] = {}
    for match in _RECEIPT_FIELD.finditer(text):
        out.setdefault(match.group(1).lower(), match.group(2))
    return out


class JasminProvider:
    """Jasmin's DLR dialect."""

    name = "jasmin"
    #: A DLR or MO form is a few hundred bytes.
    max_body_bytes = 64 * 1024

    def __init__(self, *, token: str) -> None:
        self._token = token

    def handshake(self, cb: Callback) -> Reply | None:
        """Jasmin has no subscription handshake."""
        return None

    def verify(self, cb: Callback) -> None:
        """Check the shared ``?token=`` (set in the ``dlr-url`` given to Jasmin)."""
        given = cb.query_value("token")
        if not given:
            raise Unauthorized("missing token")
        if not constant_time_equals(given, self._token):
            raise Unauthorized("token does not match")

    def normalize(self, cb: Callback) -> list[Event]:
        """One status report per DLR."""
        fields = params(request_params(cb))
        receipt: Mapping[str, str] = {}
        word = fields.get("message_status")
        if not word:
            receipt = parse_receipt(fields.get("text") or fields.get("short_message") or "")
            word = receipt.get("stat")
        if not word:
            raise InvalidEvent("is required (or a receipt text with stat:)", field="message_status")
        message_id = require_id(fields if fields.get("id") else receipt, "id")
        level = fields.get("level") or ("1" if word.upper().startswith("ESME_") else "2")
        if level not in ("1", "2", "3"):
            raise InvalidEvent("must be 1, 2 or 3", field="level")
        status = status_for(word)
        return [
            status_event(
                provider=self.name,
                provider_message_id=message_id,
                status=status,
                raw_status=word,
                occurred_at=parse_smpp_date(fields.get("donedate") or receipt.get("done date"))
                or received(cb),
                id_parts=(message_id, level, word),
                error=_error(word, status, fields.get("err") or receipt.get("err")),
            )
        ]

    def accepted(self, events: Sequence[Event]) -> Reply:
        """Jasmin treats anything but the body ``ACK/Jasmin`` as a failure and retries."""
        return ACK


def _error(word: str, status: DeliveryStatus, err: str | None) -> EventError | None:
    """An SMSC refusal (its ESME code) or a receipt's non-zero ``err``."""
    if word.upper().startswith("ESME_") and status is DeliveryStatus.ERROR:
        return EventError(code=word.upper())
    if err and err.strip("0"):
        return EventError(code=err)
    return None
