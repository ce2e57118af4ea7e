"""The Qlara delivery-status vocabulary, its rank order and its numeric codes.

The rank order is the one in ``shared/reference/providers.md``: the projection only ever moves up it.
ERROR and EXPIRED share a rank, so neither replaces the other, and both are below DELIVERED so that a
late delivery (multi-device, provider retry) still upgrades a failed message.
"""

from __future__ import annotations

import enum


class Channel(enum.StrEnum):
    """The channels a message can travel on."""

    SMS = "SMS"
    RCS = "RCS"
    WHATSAPP = "WHATSAPP"


class DeliveryStatus(enum.StrEnum):
    """Qlara's ``deliveryStatus`` values."""

    UNKNOWN = "UNKNOWN"
    SENT = "SENT"
    RECEIVED = "RECEIVED"
    ERROR = "ERROR"
    EXPIRED = "EXPIRED"
    DELIVERED = "DELIVERED"
    READ = "READ"

    @property
    def rank(self) -> int:
        """Position in the monotonic order; a projection never moves to a lower or equal rank."""
        return _RANK[self]

    @property
    def code(self) -> int:
        """The numeric ``statusCode`` served by the API and sent in webhooks (see docs/status-codes.md)."""
        return STATUS_CODES[self]

    @property
    def is_failure(self) -> bool:
        """True for the two failure outcomes."""
        return self in (DeliveryStatus.ERROR, DeliveryStatus.EXPIRED)

    @property
    def is_final(self) -> bool:
        """True when no further receipt is expected in the normal course (READ may still follow DELIVERED)."""
        return self in (
            DeliveryStatus.ERROR,
            DeliveryStatus.EXPIRED,
            DeliveryStatus.DELIVERED,
            DeliveryStatus.READ,
        )


_RANK: dict[DeliveryStatus, int] = {
    DeliveryStatus.UNKNOWN: 0,
    DeliveryStatus.SENT: 1,
    DeliveryStatus.RECEIVED: 2,
    DeliveryStatus.ERROR: 3,
    DeliveryStatus.EXPIRED: 3,
    DeliveryStatus.DELIVERED: 4,
    DeliveryStatus.READ: 5,
}

#: ``statusCode`` values. 3 = delivered is fixed by Qlara's public docs; the rest is this project's table,
#: documented in docs/status-codes.md and the OpenAPI spec.
STATUS_CODES: dict[DeliveryStatus, int] = {
    DeliveryStatus.UNKNOWN: 0,
    DeliveryStatus.SENT: 1,
    DeliveryStatus.RECEIVED: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.READ: 4,
    DeliveryStatus.EXPIRED: 5,
    DeliveryStatus.ERROR: 6,
}

#: Default human text for each status when the provider gave none.
DESCRIPTIONS: dict[DeliveryStatus, str] = {
    DeliveryStatus.UNKNOWN: "No status information available",
    DeliveryStatus.SENT: "Message sent, awaiting carrier receipt",
    DeliveryStatus.RECEIVED: "Message acknowledged by the carrier",
    DeliveryStatus.DELIVERED: "Message delivered",
    DeliveryStatus.READ: "Message read",
    DeliveryStatus.EXPIRED: "Message expired before delivery",
    DeliveryStatus.ERROR: "Message delivery failed",
}
