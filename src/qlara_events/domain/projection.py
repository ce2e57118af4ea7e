"""The status projection rules, as pure functions over a message's state.

The projector loads the state of every message a batch touches (rows locked), folds the batch's receipts
into it here, and writes the result back. Rules (shared/reference/providers.md):

1. every receipt is recorded; the caller drops exact duplicates by event identity before calling;
2. the status only moves to a higher rank; equal or lower ranks are recorded as ``superseded``;
3. order is by rank, never by provider timestamps (those only fill the ``*_at`` fields);
4. READ implies DELIVERED: ``delivered_at`` is filled when READ comes first;
5. a failure after DELIVERED/READ is recorded and flagged (``failure_after_delivery``) but not applied;
   a DELIVERED/READ after a failure does upgrade;
7. a multi-part message is the minimum of its parts (an unreported part counts as SENT), so it is
   DELIVERED only when every part is, and a mixed final result is an ERROR described as partial.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from qlara_events.domain.events import StatusReport
from qlara_events.domain.status import DESCRIPTIONS, DeliveryStatus


class Effect(enum.StrEnum):
    """What applying one receipt did; stored with the event in the message's history."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"
    FAILURE_AFTER_DELIVERY = "failure_after_delivery"
    ORPHANED = "orphaned"
    SUBMITTED = "submitted"
    INBOUND = "inbound"


@dataclasses.dataclass(slots=True)
class MessageState:
    """The projected state of one message, as loaded from and written back to Postgres."""

    message_id: str
    status: DeliveryStatus
    parts: int = 1
    part_status: dict[int, DeliveryStatus] = dataclasses.field(default_factory=dict)
    description: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    failed_after_delivery: bool = False
    delivered_at: dt.datetime | None = None
    read_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """A real change of a message's status, caused by ``event_id``."""

    message_id: str
    previous: DeliveryStatus
    status: DeliveryStatus
    event_id: str
    occurred_at: dt.datetime


def _earliest(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None or b < a else a


def apply_report(state: MessageState, report: StatusReport, part: int | None) -> tuple[Effect, Transition | None]:
    """Fold one receipt into ``state`` (mutated) and say what it did.

    ``part`` is the part the receipt is about (from the event or from the provider id it was sent to), or
    None for the whole message.
    """
    new = report.status
    t = report.occurred_at
    before = state.status

    # Timestamps are filled whatever the rank outcome: a DELIVERED arriving after READ still tells when
    # the message was delivered (rule 4 fills it from READ only until a real DELIVERED is seen).
    if new in (DeliveryStatus.DELIVERED, DeliveryStatus.READ):
        state.delivered_at = _earliest(state.delivered_at, t)
    if new is DeliveryStatus.READ:
        state.read_at = _earliest(state.read_at, t)

    if state.parts > 1:
        targets = [part] if part is not None and 1 <= part <= state.parts else list(range(1, state.parts + 1))
        moved_part = False
        for p in targets:
            current = state.part_status.get(p, DeliveryStatus.SENT)
            if new.rank > current.rank:
                state.part_status[p] = new
                moved_part = True
        aggregate = min(
            (state.part_status.get(p, DeliveryStatus.SENT) for p in range(1, state.parts + 1)),
            key=lambda s: s.rank,
        )
        if aggregate.rank <= before.rank:
            if new.is_failure and before.rank >= DeliveryStatus.DELIVERED.rank:
                state.failed_after_delivery = True
                return Effect.FAILURE_AFTER_DELIVERY, None
            return (Effect.APPLIED if moved_part else Effect.SUPERSEDED), None
        state.status = aggregate
        state.description = _multipart_description(state, report)
    else:
        if new.rank <= before.rank:
            if new.is_failure and before.rank >= DeliveryStatus.DELIVERED.rank:
                state.failed_after_delivery = True
                return Effect.FAILURE_AFTER_DELIVERY, None
            return Effect.SUPERSEDED, None
        state.status = new
        state.description = report.description or DESCRIPTIONS[new]

    if state.status.is_failure:
        state.failed_at = _earliest(state.failed_at, t)
        if report.error is not None:
            state.error_code = report.error.code
            state.error_message = report.error.message
    return Effect.APPLIED, Transition(state.message_id, before, state.status, report.id, t)


def _multipart_description(state: MessageState, report: StatusReport) -> str:
    statuses = [state.part_status.get(p, DeliveryStatus.SENT) for p in range(1, state.parts + 1)]
    delivered = sum(1 for s in statuses if s.rank >= DeliveryStatus.DELIVERED.rank)
    if state.status.is_failure and delivered:
        return f"Partially delivered: {delivered} of {state.parts} parts delivered"
    if state.status.rank >= DeliveryStatus.DELIVERED.rank:
        return DESCRIPTIONS[state.status] + f" ({state.parts} parts)"
    return report.description or DESCRIPTIONS[state.status]
