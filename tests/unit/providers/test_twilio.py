"""Twilio status callbacks and inbound webhooks: signature, normalisation, replies."""

from __future__ import annotations

import datetime as dt

import pytest

from qlara_events.domain.events import EventError, Inbound, StatusReport
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers.base import OK, Callback
from qlara_events.providers.twilio import TwilioProvider

from signing import RECEIVED_AT, form_callback, make_callback, twilio_signature

TOKEN = "f3c2a1b0e9d8c7b6a5f4e3d2c1b0a9f8"
URL = "https://events.qlara.example/ingest/v1/providers/twilio"
SID = "SM1f0e8ae6ade43cb3c0ce4525424e404f"


def status_form(status: str, **extra: str) -> list[tuple[str, str]]:
    """A status callback as Twilio posts it (field order as observed, not sorted)."""
    return [
        ("SmsSid", SID),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", "+15558675310"),
        ("MessagingServiceSid", "MGdeadbeefdeadbeefdeadbeefdeadbeef"),
        ("MessageSid", SID),
        ("AccountSid", "ACdeadbeefdeadbeefdeadbeefdeadbeef"),
        ("From", "+15017122661"),
        ("ApiVersion", "2010-04-01"),
        *extra.items(),
    ]


def inbound_form(**overrides: str) -> list[tuple[str, str]]:
    """An inbound SMS webhook."""
    fields = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": SID,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "SmsSid": SID,
        "SmsStatus": "received",
        "Body": "Hello there",
        "FromCountry": "US",
        "To": "+15558675310",
        "NumSegments": "1",
        "MessageSid": SID,
        "AccountSid": "ACdeadbeefdeadbeefdeadbeefdeadbeef",
        "From": "+14155550100",
        "ApiVersion": "2010-04-01",
    }
    fields.update(overrides)
    return list(fields.items())


def signed(pairs: list[tuple[str, str]], *, url: str = URL, token: str = TOKEN) -> Callback:
    """A form callback carrying a valid X-Twilio-Signature."""
    return form_callback(pairs, url=url, headers={"X-Twilio-Signature": twilio_signature(token, url, pairs)})


@pytest.fixture
def provider() -> TwilioProvider:
    return TwilioProvider(auth_token=TOKEN)


class TestTwilioVerify:
    """``TwilioProvider.verify``."""

    def test_published_vector(self) -> None:
        """Twilio's own documented example (token 12345) verifies, whatever the parameter order."""
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"
        pairs = [
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+14158675309"),
            ("Caller", "+14158675309"),
            ("CallSid", "CA1234567890ABCDE"),
        ]
        cb = form_callback(pairs, url=url, headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="})
        TwilioProvider(auth_token="12345").verify(cb)

    def test_published_vector_with_repeated_names(self) -> None:
        """Twilio's vector for repeated names (sorted by name, then value; duplicates once) verifies."""
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"
        pairs = [
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]
        cb = form_callback(pairs, url=url, headers={"X-Twilio-Signature": "IK+Dwps556ElfBT0I3Rgjkr1wJU="})
        TwilioProvider(auth_token="12345").verify(cb)

    def test_signed_status_callback(self, provider: TwilioProvider) -> None:
        """A status callback signed with the auth token is accepted."""
        provider.verify(signed(status_form("delivered")))

    def test_default_port_spelling(self, provider: TwilioProvider) -> None:
        """A signature over the URL with an explicit :443 still matches the rebuilt URL without it."""
        pairs = status_form("sent")
        signature = twilio_signature(TOKEN, URL.replace(".example/", ".example:443/"), pairs)
        provider.verify(form_callback(pairs, url=URL, headers={"X-Twilio-Signature": signature}))

    def test_get_signs_the_url_only(self, provider: TwilioProvider) -> None:
        """A GET webhook is signed over the full URL, query included."""
        query = status_form("sent")
        url = make_callback(method="GET", url=URL, query=query).url
        cb = make_callback(
            method="GET",
            url=url,
            query=query,
            headers={"X-Twilio-Signature": twilio_signature(TOKEN, url, [])},
        )
        provider.verify(cb)

    def test_missing_signature(self, provider: TwilioProvider) -> None:
        """A callback without X-Twilio-Signature is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(form_callback(status_form("delivered"), url=URL))

    def test_forged_signature(self, provider: TwilioProvider) -> None:
        """A signature made with another token is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(signed(status_form("delivered"), token="not-the-token"))

    def test_tampered_parameter(self, provider: TwilioProvider) -> None:
        """Changing a signed parameter (undelivered → delivered) breaks the signature."""
        pairs = status_form("undelivered")
        signature = twilio_signature(TOKEN, URL, pairs)
        tampered = [(k, "delivered" if v == "undelivered" else v) for k, v in pairs]
        with pytest.raises(Unauthorized):
            provider.verify(form_callback(tampered, url=URL, headers={"X-Twilio-Signature": signature}))

    def test_added_parameter(self, provider: TwilioProvider) -> None:
        """An unsigned extra parameter breaks the signature (every POST parameter is signed)."""
        pairs = status_form("failed")
        signature = twilio_signature(TOKEN, URL, pairs)
        with pytest.raises(Unauthorized):
            provider.verify(
                form_callback(
                    [*pairs, ("ErrorCode", "0")], url=URL, headers={"X-Twilio-Signature": signature}
                )
            )

    def test_other_url(self, provider: TwilioProvider) -> None:
        """A signature for another URL (another endpoint) is Unauthorized."""
        pairs = status_form("delivered")
        signature = twilio_signature(TOKEN, URL + "?tenant=b", pairs)
        with pytest.raises(Unauthorized):
            provider.verify(form_callback(pairs, url=URL, headers={"X-Twilio-Signature": signature}))


class TestTwilioNormalize:
    """``TwilioProvider.normalize``."""

    @pytest.mark.parametrize(
        ("word", "expected"),
        [
            ("queued", DeliveryStatus.SENT),
            ("sending", DeliveryStatus.SENT),
            ("sent", DeliveryStatus.SENT),
            ("accepted", DeliveryStatus.SENT),
            ("scheduled", DeliveryStatus.SENT),
            ("partially_delivered", DeliveryStatus.RECEIVED),
            ("delivered", DeliveryStatus.DELIVERED),
            ("read", DeliveryStatus.READ),
            ("failed", DeliveryStatus.ERROR),
            ("undelivered", DeliveryStatus.ERROR),
            ("canceled", DeliveryStatus.ERROR),
            ("receiving", None),
            ("received", None),
            ("some_new_state", DeliveryStatus.UNKNOWN),
        ],
    )
    def test_status_table(self, provider: TwilioProvider, word: str, expected: DeliveryStatus | None) -> None:
        """Every MessageStatus maps per the module table; inbound states without a Body yield nothing."""
        events = provider.normalize(form_callback(status_form(word)))
        if expected is None:
            assert events == []
            return
        [event] = events
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id) == (
            expected,
            word,
            "twilio",
            SID,
        )
        assert event.id == f"twilio:{SID}:{word}"
        assert event.status_code == expected.code
        assert event.description

    def test_error_code(self, provider: TwilioProvider) -> None:
        """ErrorCode becomes the event error, with Twilio's ErrorMessage when it sends one."""
        [event] = provider.normalize(
            form_callback(
                status_form("undelivered", ErrorCode="30003", ErrorMessage="Unreachable destination handset")
            )
        )
        assert isinstance(event, StatusReport)
        assert event.error == EventError(
            code="30003", message="Unreachable destination handset", permanent=None
        )
        assert event.description == "Unreachable destination handset"

    def test_done_date(self, provider: TwilioProvider) -> None:
        """RawDlrDoneDate (YYMMDDhhmm, UTC) fills occurred_at."""
        [event] = provider.normalize(form_callback(status_form("delivered", RawDlrDoneDate="2405011159")))
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, tzinfo=dt.UTC)

    def test_no_done_date(self, provider: TwilioProvider) -> None:
        """Without RawDlrDoneDate (or with a garbled one) occurred_at is when the callback arrived."""
        for extra in ({}, {"RawDlrDoneDate": "24-05-01"}):
            [event] = provider.normalize(form_callback(status_form("sent", **extra)))
            assert event.occurred_at == RECEIVED_AT

    def test_retry_has_same_id(self, provider: TwilioProvider) -> None:
        """A provider retry of the same callback produces an identical event."""
        first = provider.normalize(form_callback(status_form("delivered")))
        again = provider.normalize(form_callback(status_form("delivered"), received_at=RECEIVED_AT))
        assert first == again

    def test_inbound_sms(self, provider: TwilioProvider) -> None:
        """An inbound SMS (SmsStatus=received with a Body) is an Inbound event."""
        [event] = provider.normalize(form_callback(inbound_form()))
        assert event == Inbound(
            id=f"twilio:in:{SID}",
            occurred_at=RECEIVED_AT,
            channel=Channel.SMS,
            source="+14155550100",
            destination="+15558675310",
            text="Hello there",
            provider="twilio",
            provider_message_id=SID,
        )

    def test_inbound_whatsapp(self, provider: TwilioProvider) -> None:
        """Twilio's whatsapp: address prefix selects the WHATSAPP channel and is stripped."""
        [event] = provider.normalize(
            form_callback(inbound_form(From="whatsapp:+14155550100", To="whatsapp:+15558675310"))
        )
        assert isinstance(event, Inbound)
        assert (event.channel, event.source, event.destination) == (
            Channel.WHATSAPP,
            "+14155550100",
            "+15558675310",
        )

    def test_inbound_mms(self, provider: TwilioProvider) -> None:
        """MMS attachments are listed as media."""
        form = inbound_form(
            Body="",
            NumMedia="1",
            MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
            MediaContentType0="image/jpeg",
        )
        [event] = provider.normalize(form_callback(form))
        assert isinstance(event, Inbound)
        assert event.message_type == "IMAGE"
        assert event.media == (
            {
                "type": "image",
                "url": "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
                "mimeType": "image/jpeg",
            },
        )

    def test_get_callback(self, provider: TwilioProvider) -> None:
        """A GET webhook carries its parameters in the query string."""
        [event] = provider.normalize(make_callback(method="GET", url=URL, query=status_form("sent")))
        assert isinstance(event, StatusReport)
        assert event.status == DeliveryStatus.SENT

    @pytest.mark.parametrize(
        "body",
        [
            b"MessageSid=SM1",  # no status
            b"MessageStatus=delivered",  # no sid
            b"MessageStatus=delivered&MessageSid=",  # empty sid
            b"MessageStatus=delivered&MessageSid=" + b"S" * 201,  # sid too long for an id
            b"MessageStatus&MessageSid",  # not key=value
            b"\xff\xfe=\x00",  # not UTF-8
            b"SmsStatus=received&MessageSid=SM1&Body=hi&To=%2B1555",  # inbound without From
            b"SmsStatus=received&MessageSid=SM1&Body=hi&From=whatsapp%3A&To=%2B1555",  # empty address
        ],
    )
    def test_malformed(self, provider: TwilioProvider, body: bytes) -> None:
        """Unreadable or incomplete callbacks are InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(make_callback(body=body, content_type="application/x-www-form-urlencoded"))

    @pytest.mark.parametrize("field", ["MessageStatus", "MessageSid", "ErrorMessage", "Body"])
    def test_nul_is_refused_by_name(self, provider: TwilioProvider, field: str) -> None:
        """A NUL (which Postgres text cannot hold) is InvalidEvent naming its field, not an unprojectable event."""
        form = dict(inbound_form() if field == "Body" else status_form("undelivered", ErrorCode="30003"))
        form[field] = "x\x00y"
        with pytest.raises(InvalidEvent) as caught:
            provider.normalize(form_callback(list(form.items())))
        assert caught.value.field == field


class TestTwilioReplies:
    """``handshake`` and ``accepted``."""

    def test_no_handshake(self, provider: TwilioProvider) -> None:
        """Twilio has no handshake: every request is a callback."""
        assert provider.handshake(make_callback(method="GET", query=[("hub.mode", "subscribe")])) is None

    def test_accepted(self, provider: TwilioProvider) -> None:
        """The reply is an empty 200."""
        assert provider.accepted([]) is OK
