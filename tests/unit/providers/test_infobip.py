"""Infobip delivery and seen reports: token authentication, batch normalisation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from qlara_events.domain.events import EventError, StatusReport
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers.base import OK, Callback
from qlara_events.providers.infobip import InfobipProvider

from signing import RECEIVED_AT, basic_auth, json_callback, make_callback

TOKEN = "ib-4c6f1e2d9a8b7c6d5e4f"
MESSAGE_ID = "7e17a5a0-3d59-4b5e-a4a7-c0fcbd8b8d9b"
NO_ERROR = {
    "groupId": 0,
    "groupName": "OK",
    "id": 0,
    "name": "NO_ERROR",
    "description": "No Error",
    "permanent": False,
}


def report(
    group: int = 3, status_id: int = 5, name: str = "DELIVERED_TO_HANDSET", **extra: Any
) -> dict[str, Any]:
    """One delivery report as Infobip posts it."""
    out: dict[str, Any] = {
        "bulkId": "BULK-ID-123-xyz",
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {
            "groupId": group,
            "groupName": name.split("_")[0],
            "id": status_id,
            "name": name,
            "description": name.replace("_", " ").capitalize(),
        },
        "error": NO_ERROR,
        "messageId": MESSAGE_ID,
        "doneAt": "2024-05-01T11:59:30.000+0000",
        "smsCount": 1,
        "sentAt": "2024-05-01T11:59:00.000+0000",
        "to": "41793026727",
    }
    out.update(extra)
    return out


def seen_report() -> dict[str, Any]:
    """A WhatsApp "seen" report: no status object, a seenAt timestamp."""
    return {
        "messageId": MESSAGE_ID,
        "to": "41793026727",
        "from": "447860099299",
        "sentAt": "2024-05-01T11:59:00.000+0000",
        "seenAt": "2024-05-01T11:59:45.250+0000",
        "channel": "WHATSAPP",
    }


def callback(
    *reports: dict[str, Any],
    headers: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
) -> Callback:
    return json_callback({"results": list(reports)}, headers=headers, query=query or [])


@pytest.fixture
def provider() -> InfobipProvider:
    return InfobipProvider(token=TOKEN)


class TestInfobipVerify:
    """``InfobipProvider.verify``."""

    def test_basic_auth(self, provider: InfobipProvider) -> None:
        """The token as the Basic password, with any user name, is accepted."""
        provider.verify(callback(report(), headers={"Authorization": basic_auth("infobip", TOKEN)}))
        provider.verify(callback(report(), headers={"Authorization": basic_auth("", TOKEN)}))

    def test_query_token(self, provider: InfobipProvider) -> None:
        """The token as ``?token=`` is accepted."""
        provider.verify(callback(report(), query=[("token", TOKEN)]))

    def test_missing_token(self, provider: InfobipProvider) -> None:
        """A report without any token is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(callback(report()))

    @pytest.mark.parametrize(
        "headers",
        [
            {"Authorization": basic_auth("infobip", "wrong")},
            {"Authorization": basic_auth(TOKEN, "")},  # the token as user name is not the password
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": "Basic !!!not-base64"},
        ],
    )
    def test_wrong_basic_auth(self, provider: InfobipProvider, headers: dict[str, str]) -> None:
        """A wrong or malformed Authorization header is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(callback(report(), headers=headers))

    def test_wrong_query_token(self, provider: InfobipProvider) -> None:
        """A wrong ``?token=`` is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(callback(report(), query=[("token", TOKEN + "x")]))


class TestInfobipNormalize:
    """``InfobipProvider.normalize``."""

    @pytest.mark.parametrize(
        ("group", "status_id", "name", "expected"),
        [
            (1, 26, "PENDING_ACCEPTED", DeliveryStatus.SENT),
            (1, 7, "PENDING_ENROUTE", DeliveryStatus.SENT),
            (1, 3, "PENDING_WAITING_DELIVERY", DeliveryStatus.SENT),
            (3, 2, "DELIVERED_TO_OPERATOR", DeliveryStatus.RECEIVED),
            (3, 5, "DELIVERED_TO_HANDSET", DeliveryStatus.DELIVERED),
            (3, 77, "DELIVERED_TO_HANDSET", DeliveryStatus.DELIVERED),
            (3, 78, "DELIVERED_TO_SMSC", DeliveryStatus.RECEIVED),
            (2, 4, "UNDELIVERABLE_REJECTED_OPERATOR", DeliveryStatus.ERROR),
            (2, 9, "UNDELIVERABLE_NOT_DELIVERED", DeliveryStatus.ERROR),
            (4, 15, "EXPIRED_EXPIRED", DeliveryStatus.EXPIRED),
            (4, 29, "EXPIRED_DLR_UNKNOWN", DeliveryStatus.EXPIRED),
            (5, 6, "REJECTED_NETWORK", DeliveryStatus.ERROR),
            (5, 12, "REJECTED_NOT_ENOUGH_CREDITS", DeliveryStatus.ERROR),
            (9, 90, "SOMETHING_NEW", DeliveryStatus.UNKNOWN),
        ],
    )
    def test_status_table(
        self, provider: InfobipProvider, group: int, status_id: int, name: str, expected: DeliveryStatus
    ) -> None:
        """Every status group maps per the module table, including the DELIVERED_TO_OPERATOR trap."""
        [event] = provider.normalize(callback(report(group, status_id, name)))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id) == (
            expected,
            name,
            "infobip",
            MESSAGE_ID,
        )
        assert event.id == f"infobip:{MESSAGE_ID}:{status_id}"
        assert event.description == name.replace("_", " ").capitalize()
        assert event.error is None
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, 30, tzinfo=dt.UTC)

    def test_seen(self, provider: InfobipProvider) -> None:
        """A seen report is READ, timed by seenAt, with its own id."""
        [event] = provider.normalize(callback(seen_report()))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.id) == (
            DeliveryStatus.READ,
            "SEEN",
            f"infobip:{MESSAGE_ID}:seen",
        )
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, 45, 250000, tzinfo=dt.UTC)

    def test_error(self, provider: InfobipProvider) -> None:
        """A non-zero error becomes the event error, with Infobip's permanence flag."""
        error = {
            "groupId": 1,
            "groupName": "HANDSET_ERRORS",
            "id": 27,
            "name": "EC_ABSENT_SUBSCRIBER",
            "description": "Absent Subscriber",
            "permanent": False,
        }
        [event] = provider.normalize(callback(report(2, 9, "UNDELIVERABLE_NOT_DELIVERED", error=error)))
        assert isinstance(event, StatusReport)
        assert event.error == EventError(code="27", message="Absent Subscriber", permanent=False)

    def test_batch(self, provider: InfobipProvider) -> None:
        """Every report of a batch becomes an event, in order."""
        reports = [report(3, 2, "DELIVERED_TO_OPERATOR", messageId=f"m{i}") for i in range(100)]
        events = provider.normalize(callback(*reports))
        assert [(type(e), e.provider_message_id) for e in events] == [
            (StatusReport, f"m{i}") for i in range(100)
        ]
        assert provider.normalize(callback()) == []

    def test_missing_timestamps(self, provider: InfobipProvider) -> None:
        """Without doneAt (or with an unreadable one) occurred_at is the arrival time."""
        for done in (None, "yesterday"):
            [event] = provider.normalize(callback(report(doneAt=done)))
            assert event.occurred_at == RECEIVED_AT

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json",
            b"[]",
            b"{}",
            b'{"results": {}}',
            b'{"results": [42]}',
            b'{"results": [{"status": {"groupId": 3, "id": 5}}]}',
            b'{"results": [{"messageId": "m1"}]}',
            b'{"results": [{"messageId": "m1", "status": {"id": 5}}]}',
            b'{"results": [{"messageId": "m1", "status": "DELIVERED"}]}',
            b'{"results": [{"messageId": "m1", "status": {"groupId": 3}, "error": "bad"}]}',
            b'{"results": [{"messageId": ["m1"], "status": {"groupId": 3}}]}',
        ],
    )
    def test_malformed(self, provider: InfobipProvider, payload: bytes) -> None:
        """Unreadable or incomplete reports are InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(json_callback(payload))


class TestInfobipReplies:
    """``handshake`` and ``accepted``."""

    def test_no_handshake(self, provider: InfobipProvider) -> None:
        """Infobip has no handshake."""
        assert provider.handshake(make_callback()) is None

    def test_accepted(self, provider: InfobipProvider) -> None:
        """The reply is an empty 200."""
        assert provider.accepted([]) is OK
