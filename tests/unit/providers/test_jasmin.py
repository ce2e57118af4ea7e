"""Jasmin HTTP DLR callbacks: token, levels 1-3, raw receipt text, the ACK/Jasmin reply."""

from __future__ import annotations

import datetime as dt

import pytest

from qlara_events.domain.events import EventError, StatusReport
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers.base import Callback, Reply
from qlara_events.providers.jasmin import JasminProvider, parse_receipt

from signing import RECEIVED_AT, form_callback, make_callback

TOKEN = "jasmin-dlr-token-31c4"
MESSAGE_ID = "16fd2706-8baf-433b-82eb-8c7fada847da"


def level1(status: str = "ESME_ROK") -> list[tuple[str, str]]:
    """The SMSC-acknowledgement DLR."""
    return [("id", MESSAGE_ID), ("message_status", status), ("level", "1"), ("connector", "smppcc")]


def level2(stat: str = "DELIVRD", *, level: str = "2", err: str = "000") -> list[tuple[str, str]]:
    """The handset-receipt DLR."""
    return [
        ("id", MESSAGE_ID),
        ("message_status", stat),
        ("level", level),
        ("connector", "smppcc"),
        ("id_smsc", "2fe9d1c8"),
        ("sub", "001"),
        ("dlvrd", "001"),
        ("subdate", "2405011158"),
        ("donedate", "2405011159"),
        ("err", err),
        ("text", "Your code is 4321"),
    ]


def post(pairs: list[tuple[str, str]], token: str | None = TOKEN) -> Callback:
    return form_callback(pairs, query=[("token", token)] if token is not None else [])


def get(pairs: list[tuple[str, str]], token: str = TOKEN) -> Callback:
    return make_callback(method="GET", query=[("token", token), *pairs])


@pytest.fixture
def provider() -> JasminProvider:
    return JasminProvider(token=TOKEN)


class TestJasminVerify:
    """``JasminProvider.verify``."""

    def test_token(self, provider: JasminProvider) -> None:
        """The shared ?token= is accepted on POST and GET."""
        provider.verify(post(level2()))
        provider.verify(get(level2()))

    def test_missing_token(self, provider: JasminProvider) -> None:
        """A DLR without a token is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(post(level2(), token=None))

    def test_wrong_token(self, provider: JasminProvider) -> None:
        """A wrong token is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(post(level2(), token=TOKEN[:-1]))

    def test_token_in_body_is_not_enough(self, provider: JasminProvider) -> None:
        """The token must be in the dlr-url query, not smuggled into the form body."""
        with pytest.raises(Unauthorized):
            provider.verify(post([*level2(), ("token", TOKEN)], token=None))


class TestJasminNormalize:
    """``JasminProvider.normalize``."""

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            ("ESME_ROK", DeliveryStatus.SENT),
            ("ESME_RTHROTTLED", DeliveryStatus.ERROR),
            ("ESME_RINVDSTADR", DeliveryStatus.ERROR),
        ],
    )
    def test_level1_table(self, provider: JasminProvider, status: str, expected: DeliveryStatus) -> None:
        """Level 1 is the SMSC's answer to the submit: ESME_ROK is SENT, any other ESME code an ERROR."""
        [event] = provider.normalize(post(level1(status)))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.id) == (
            expected,
            status,
            f"jasmin:{MESSAGE_ID}:1:{status}",
        )
        assert event.error == (None if status == "ESME_ROK" else EventError(code=status))
        assert event.occurred_at == RECEIVED_AT

    @pytest.mark.parametrize(
        ("stat", "expected"),
        [
            ("DELIVRD", DeliveryStatus.DELIVERED),
            ("EXPIRED", DeliveryStatus.EXPIRED),
            ("DELETED", DeliveryStatus.ERROR),
            ("UNDELIV", DeliveryStatus.ERROR),
            ("ACCEPTD", DeliveryStatus.RECEIVED),
            ("UNKNOWN", DeliveryStatus.UNKNOWN),
            ("REJECTD", DeliveryStatus.ERROR),
            ("ENROUTE", DeliveryStatus.RECEIVED),
            ("2", DeliveryStatus.DELIVERED),  # message_state TLV values
            ("5", DeliveryStatus.ERROR),
            ("DELIVERED", DeliveryStatus.DELIVERED),
            ("WHATEVER", DeliveryStatus.UNKNOWN),
        ],
    )
    @pytest.mark.parametrize("level", ["2", "3"])
    def test_receipt_table(
        self, provider: JasminProvider, stat: str, expected: DeliveryStatus, level: str
    ) -> None:
        """Every SMPP stat maps per the module table at levels 2 and 3, timed by donedate."""
        [event] = provider.normalize(post(level2(stat, level=level)))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id) == (
            expected,
            stat,
            "jasmin",
            MESSAGE_ID,
        )
        assert event.id == f"jasmin:{MESSAGE_ID}:{level}:{stat}"
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, tzinfo=dt.UTC)
        assert event.error is None

    def test_err_code(self, provider: JasminProvider) -> None:
        """A non-zero err becomes the event error."""
        [event] = provider.normalize(post(level2("UNDELIV", err="0B1")))
        assert isinstance(event, StatusReport)
        assert event.error == EventError(code="0B1")

    def test_get_equals_post(self, provider: JasminProvider) -> None:
        """GET and POST versions of one DLR normalise to the same event."""
        assert provider.normalize(get(level2())) == provider.normalize(post(level2()))

    def test_raw_receipt_text(self, provider: JasminProvider) -> None:
        """Without message_status the SMPP receipt text is parsed for id, stat, err and done date."""
        text = (
            f"id:{MESSAGE_ID} sub:001 dlvrd:000 submit date:2405011158 done date:2405011201 "
            "stat:UNDELIV err:034 text:Your code is 4321"
        )
        [event] = provider.normalize(post([("level", "2"), ("short_message", text)]))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider_message_id) == (
            DeliveryStatus.ERROR,
            "UNDELIV",
            MESSAGE_ID,
        )
        assert event.error == EventError(code="034")
        assert event.occurred_at == dt.datetime(2024, 5, 1, 12, 1, tzinfo=dt.UTC)

    def test_parse_receipt(self) -> None:
        """The receipt parser reads the standard fields, including the two-word date keys."""
        assert parse_receipt(
            "id:abc sub:001 dlvrd:001 submit date:2405011158 done date:2405011159 stat:DELIVRD err:000"
        ) == {
            "id": "abc",
            "sub": "001",
            "dlvrd": "001",
            "submit date": "2405011158",
            "done date": "2405011159",
            "stat": "DELIVRD",
            "err": "000",
        }

    def test_missing_level(self, provider: JasminProvider) -> None:
        """Without level, ESME codes are taken as level 1 and stats as level 2."""
        [ack] = provider.normalize(post([("id", MESSAGE_ID), ("message_status", "ESME_ROK")]))
        [dlr] = provider.normalize(post([("id", MESSAGE_ID), ("message_status", "DELIVRD")]))
        assert (ack.id, dlr.id) == (f"jasmin:{MESSAGE_ID}:1:ESME_ROK", f"jasmin:{MESSAGE_ID}:2:DELIVRD")

    @pytest.mark.parametrize(
        "pairs",
        [
            [("id", MESSAGE_ID), ("level", "2")],
            [("message_status", "DELIVRD"), ("level", "2")],
            [("id", MESSAGE_ID), ("message_status", "DELIVRD"), ("level", "9")],
            [("text", "hello there"), ("level", "2")],
            [("text", "stat:DELIVRD err:000"), ("level", "2")],
        ],
    )
    def test_malformed(self, provider: JasminProvider, pairs: list[tuple[str, str]]) -> None:
        """A DLR without an id, a status or a valid level is InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(post(pairs))

    def test_bad_encoding(self, provider: JasminProvider) -> None:
        """A body that is not form-encoded UTF-8 is InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(
                make_callback(body=b"id=\xff&&level", content_type="application/x-www-form-urlencoded")
            )


class TestJasminReplies:
    """``handshake`` and ``accepted``."""

    def test_no_handshake(self, provider: JasminProvider) -> None:
        """Jasmin has no handshake."""
        assert provider.handshake(get(level1())) is None

    def test_ack(self, provider: JasminProvider) -> None:
        """Jasmin needs the exact body ACK/Jasmin, or it retries."""
        assert provider.accepted([]) == Reply(200, b"ACK/Jasmin")
