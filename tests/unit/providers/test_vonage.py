"""Vonage SMS delivery receipts: optional signing, GET/form/JSON bodies, normalisation."""

from __future__ import annotations

import datetime as dt

import pytest

from qlara_events.domain.events import EventError, StatusReport
from qlara_events.domain.status import DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers.base import OK, Callback
from qlara_events.providers.vonage import VonageProvider, signature

from signing import RECEIVED_AT, form_callback, json_callback, make_callback, vonage_signature

SECRET = "n0tS0Secret5ignatureS3cret"
MESSAGE_ID = "0A0000001234567B"
NOW = str(int(RECEIVED_AT.timestamp()))


def receipt(status: str = "delivered", **overrides: str) -> dict[str, str]:
    """A delivery receipt as Vonage sends it."""
    fields = {
        "msisdn": "447700900000",
        "to": "AcmeInc",
        "network-code": "23410",
        "messageId": MESSAGE_ID,
        "price": "0.03330000",
        "status": status,
        "scts": "2405011158",
        "err-code": "0",
        "api-key": "abcd1234",
        "message-timestamp": "2024-05-01 11:59:30",
        "client-ref": "order-42",
    }
    fields.update(overrides)
    return fields


def signed(
    fields: dict[str, str], *, method: str = "md5hash", secret: str = SECRET, ts: str = NOW
) -> dict[str, str]:
    """``fields`` plus ``timestamp`` and a valid ``sig``."""
    out = {**fields, "timestamp": ts}
    out["sig"] = vonage_signature(secret, method, out)
    return out


@pytest.fixture
def provider() -> VonageProvider:
    return VonageProvider(signature_secret=SECRET)


class TestVonageSignature:
    """``vonage.signature`` against the vectors published in Vonage's SDKs."""

    @pytest.mark.parametrize(
        ("method", "secret", "fields", "expected"),
        [
            (
                "md5hash",
                "secret",
                {"a": "1", "b": "2", "timestamp": "1461605396"},
                "6af838ef94998832dbfc29020b564830",
            ),
            (
                "md5",
                "signature_secret",
                {"param1": "value1", "param2": "value2", "timestamp": "1234567890"},
                "724c2bf6ca423c36e20631b11d1c5753",
            ),
            (
                "md5",
                "signature_secret",
                {"param1": "value&1", "param2": "value=2", "timestamp": "1234567890"},
                "2bbf0abafb2c55e5af6231513896a2ac",
            ),
            (
                "sha256",
                "signature_secret",
                {"param1": "value1", "param2": "value2", "timestamp": "1234567890"},
                "280c4320703dbc98bfa22db676655ed2acfbfe8792b062ff7622e67f1183c287",
            ),
        ],
    )
    def test_vectors(self, method: str, secret: str, fields: dict[str, str], expected: str) -> None:
        """Each method reproduces Vonage's own test vector (``sig`` itself is never signed)."""
        assert signature(secret, method, {**fields, "sig": "ignored"}) == expected


class TestVonageVerify:
    """``VonageProvider.verify``."""

    @pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
    def test_signed_get(self, method: str) -> None:
        """A GET receipt signed with each supported method is accepted."""
        VonageProvider(signature_secret=SECRET, signature_method=method).verify(
            make_callback(method="GET", query=list(signed(receipt(), method=method).items()))
        )

    def test_signed_form_and_json(self, provider: VonageProvider) -> None:
        """POST form and POST JSON receipts are verified over the same parameters."""
        fields = signed(receipt())
        provider.verify(form_callback(list(fields.items())))
        provider.verify(json_callback(fields))

    def test_upper_case_sig(self, provider: VonageProvider) -> None:
        """The comparison ignores hex case."""
        fields = signed(receipt())
        fields["sig"] = fields["sig"].upper()
        provider.verify(make_callback(method="GET", query=list(fields.items())))

    def test_value_with_separators(self, provider: VonageProvider) -> None:
        """``&`` and ``=`` inside values are signed as ``_``."""
        fields = signed(receipt(**{"client-ref": "a=b&c"}))
        provider.verify(form_callback(list(fields.items())))

    @pytest.mark.parametrize("missing", ["sig", "timestamp"])
    def test_missing_fields(self, provider: VonageProvider, missing: str) -> None:
        """Without sig or timestamp a receipt is Unauthorized when a secret is configured."""
        fields = signed(receipt())
        del fields[missing]
        with pytest.raises(Unauthorized):
            provider.verify(make_callback(method="GET", query=list(fields.items())))

    def test_forged(self, provider: VonageProvider) -> None:
        """A sig made with another secret is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(
                make_callback(method="GET", query=list(signed(receipt(), secret="other").items()))
            )

    def test_tampered(self, provider: VonageProvider) -> None:
        """Changing a signed field breaks the signature."""
        fields = signed(receipt("failed"))
        fields["status"] = "delivered"
        with pytest.raises(Unauthorized):
            provider.verify(make_callback(method="GET", query=list(fields.items())))

    def test_wrong_method(self) -> None:
        """A sha256 sig does not verify when md5hash is configured."""
        fields = signed(receipt(), method="sha256")
        with pytest.raises(Unauthorized):
            VonageProvider(signature_secret=SECRET).verify(
                make_callback(method="GET", query=list(fields.items()))
            )

    @pytest.mark.parametrize("skew", [-301, 301, 86_400])
    def test_stale_timestamp(self, provider: VonageProvider, skew: int) -> None:
        """A correctly signed receipt more than 5 minutes off the ingress clock is a replay."""
        fields = signed(receipt(), ts=str(int(RECEIVED_AT.timestamp()) + skew))
        with pytest.raises(Unauthorized):
            provider.verify(make_callback(method="GET", query=list(fields.items())))

    def test_fresh_timestamp(self, provider: VonageProvider) -> None:
        """A timestamp within 5 minutes either way is accepted."""
        for skew in (-300, 300):
            fields = signed(receipt(), ts=str(int(RECEIVED_AT.timestamp()) + skew))
            provider.verify(make_callback(method="GET", query=list(fields.items())))

    def test_no_secret(self) -> None:
        """Without a configured secret verify accepts (the ingress decides whether Vonage is enabled)."""
        VonageProvider(signature_secret=None).verify(
            make_callback(method="GET", query=list(receipt().items()))
        )

    def test_unknown_method(self) -> None:
        """An unsupported signature method is a configuration error."""
        with pytest.raises(ValueError):
            VonageProvider(signature_secret=SECRET, signature_method="crc32")


class TestVonageNormalize:
    """``VonageProvider.normalize``."""

    @pytest.mark.parametrize(
        ("word", "expected"),
        [
            ("accepted", DeliveryStatus.SENT),
            ("buffered", DeliveryStatus.SENT),
            ("delivered", DeliveryStatus.DELIVERED),
            ("expired", DeliveryStatus.EXPIRED),
            ("failed", DeliveryStatus.ERROR),
            ("rejected", DeliveryStatus.ERROR),
            ("unknown", DeliveryStatus.UNKNOWN),
            ("something-new", DeliveryStatus.UNKNOWN),
        ],
    )
    def test_status_table(self, provider: VonageProvider, word: str, expected: DeliveryStatus) -> None:
        """Every Vonage status maps per the module table."""
        [event] = provider.normalize(make_callback(method="GET", query=list(signed(receipt(word)).items())))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id) == (
            expected,
            word,
            "vonage",
            MESSAGE_ID,
        )
        assert event.id == f"vonage:{MESSAGE_ID}:{word}:0"
        assert event.error is None

    def test_error_code(self, provider: VonageProvider) -> None:
        """A non-zero err-code is the event error, described from Vonage's table."""
        [event] = provider.normalize(json_callback(receipt("failed", **{"err-code": "6"})))
        assert isinstance(event, StatusReport)
        assert event.error == EventError(code="6", message="Anti-Spam Rejection")
        assert event.description == "Anti-Spam Rejection"
        assert event.id == f"vonage:{MESSAGE_ID}:failed:6"

    def test_message_timestamp(self, provider: VonageProvider) -> None:
        """message-timestamp (UTC) fills occurred_at."""
        [event] = provider.normalize(form_callback(list(receipt().items())))
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, 30, tzinfo=dt.UTC)

    def test_scts_fallback(self, provider: VonageProvider) -> None:
        """Without message-timestamp, scts (YYMMDDHHMM) fills occurred_at; without both, the arrival time."""
        fields = receipt()
        del fields["message-timestamp"]
        [event] = provider.normalize(form_callback(list(fields.items())))
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 58, tzinfo=dt.UTC)
        del fields["scts"]
        [event] = provider.normalize(form_callback(list(fields.items())))
        assert event.occurred_at == RECEIVED_AT

    def test_bodies_agree(self, provider: VonageProvider) -> None:
        """GET, form and JSON versions of one receipt normalise to the same event (retries dedupe)."""
        fields = receipt("expired")
        events = [
            provider.normalize(make_callback(method="GET", query=list(fields.items()))),
            provider.normalize(form_callback(list(fields.items()))),
            provider.normalize(json_callback(fields)),
        ]
        assert events[0] == events[1] == events[2]

    @pytest.mark.parametrize(
        "cb",
        [
            json_callback(b"[1, 2]"),
            json_callback(b"{not json"),
            json_callback({"messageId": MESSAGE_ID, "status": {"nested": True}}),
            json_callback({"messageId": MESSAGE_ID}),
            json_callback({"status": "delivered"}),
            json_callback({"messageId": "", "status": "delivered"}),
            make_callback(body=b"\xff=\xfe", content_type="application/x-www-form-urlencoded"),
        ],
    )
    def test_malformed(self, provider: VonageProvider, cb: Callback) -> None:
        """Unreadable or incomplete receipts are InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(cb)


class TestVonageReplies:
    """``handshake`` and ``accepted``."""

    def test_no_handshake(self, provider: VonageProvider) -> None:
        """Vonage has no handshake."""
        assert provider.handshake(make_callback(method="GET")) is None

    def test_accepted(self, provider: VonageProvider) -> None:
        """The reply is an empty 200."""
        assert provider.accepted([]) is OK
