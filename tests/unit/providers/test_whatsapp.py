"""WhatsApp Cloud API webhooks: verification handshake, signature, batch normalisation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest

from qlara_events.domain.events import EventError, Inbound, StatusReport
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import Forbidden, InvalidEvent, Unauthorized
from qlara_events.providers.base import OK, Callback, Reply
from qlara_events.providers.whatsapp import WhatsAppProvider

from signing import RECEIVED_AT, json_callback, make_callback, whatsapp_signature

APP_SECRET = "8f2c6b1a0d9e8f7a6b5c4d3e2f1a0b9c"
VERIFY_TOKEN = "qlara-verify-7781"
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
INBOUND_ID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTNCNDhDNzQyQjYyMDY1QjVGOQA="
STAMP = "1714564770"  # 2024-05-01T11:59:30Z
METADATA = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}


def webhook(*changes: dict[str, Any]) -> dict[str, Any]:
    """A webhook POST with one entry holding ``changes``."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": list(changes)}],
    }


def messages_change(
    *, statuses: list[dict[str, Any]] | None = None, messages: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": METADATA}
    if statuses is not None:
        value["statuses"] = statuses
    if messages is not None:
        value["contacts"] = [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551181"}]
        value["messages"] = messages
    return {"value": value, "field": "messages"}


def status(word: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": WAMID,
        "status": word,
        "timestamp": STAMP,
        "recipient_id": "16505551234",
        "conversation": {"id": "a8b2c1d4e5f6", "origin": {"type": "marketing"}},
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"},
    }
    out.update(extra)
    return out


def message(kind: str, content: Any) -> dict[str, Any]:
    return {"from": "16315551181", "id": INBOUND_ID, "timestamp": STAMP, "type": kind, kind: content}


def change_value(value: object) -> bytes:
    """A webhook whose single ``messages`` change has this ``value``."""
    return orjson.dumps({"entry": [{"changes": [{"field": "messages", "value": value}]}]})


def signed(payload: dict[str, Any] | bytes, secret: str = APP_SECRET) -> Callback:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return json_callback(body, headers={"X-Hub-Signature-256": whatsapp_signature(secret, body)})


@pytest.fixture
def provider() -> WhatsAppProvider:
    return WhatsAppProvider(app_secret=APP_SECRET, verify_token=VERIFY_TOKEN)


class TestWhatsAppHandshake:
    """``WhatsAppProvider.handshake``."""

    def hub(self, **params: str) -> Callback:
        return make_callback(method="GET", query=[(f"hub.{k}", v) for k, v in params.items()])

    def test_subscribe(self, provider: WhatsAppProvider) -> None:
        """The right verify token gets the challenge back with a 200."""
        reply = provider.handshake(
            self.hub(mode="subscribe", verify_token=VERIFY_TOKEN, challenge="1158201444")
        )
        assert reply == Reply(200, b"1158201444")

    def test_wrong_token(self, provider: WhatsAppProvider) -> None:
        """A wrong verify token is Forbidden (Meta expects 403)."""
        with pytest.raises(Forbidden):
            provider.handshake(self.hub(mode="subscribe", verify_token="guess", challenge="1158201444"))

    @pytest.mark.parametrize(
        "params",
        [
            {"mode": "unsubscribe", "verify_token": VERIFY_TOKEN, "challenge": "1"},
            {"mode": "subscribe", "challenge": "1"},
            {"mode": "subscribe", "verify_token": VERIFY_TOKEN},
        ],
    )
    def test_incomplete(self, provider: WhatsAppProvider, params: dict[str, str]) -> None:
        """A hub request with the wrong mode or a missing token/challenge is Forbidden."""
        with pytest.raises(Forbidden):
            provider.handshake(self.hub(**params))

    def test_not_a_handshake(self, provider: WhatsAppProvider) -> None:
        """POSTs and GETs without hub parameters are not handshakes."""
        assert provider.handshake(signed(webhook())) is None
        assert provider.handshake(make_callback(method="GET")) is None


class TestWhatsAppVerify:
    """``WhatsAppProvider.verify``."""

    def test_signed(self, provider: WhatsAppProvider) -> None:
        """A body signed with the app secret is accepted."""
        provider.verify(signed(webhook(messages_change(statuses=[status("read")]))))

    def test_missing(self, provider: WhatsAppProvider) -> None:
        """A POST without X-Hub-Signature-256 is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(json_callback(webhook()))

    def test_forged(self, provider: WhatsAppProvider) -> None:
        """A signature made with another secret is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(signed(webhook(), secret="other"))

    def test_tampered_body(self, provider: WhatsAppProvider) -> None:
        """Any change to the raw body (even whitespace) breaks the signature."""
        body = orjson.dumps(webhook(messages_change(statuses=[status("failed")])))
        header = whatsapp_signature(APP_SECRET, body)
        with pytest.raises(Unauthorized):
            provider.verify(json_callback(body + b" ", headers={"X-Hub-Signature-256": header}))

    def test_other_scheme(self, provider: WhatsAppProvider) -> None:
        """Only the sha256= scheme is accepted."""
        body = orjson.dumps(webhook())
        header = whatsapp_signature(APP_SECRET, body).replace("sha256=", "sha1=")
        with pytest.raises(Unauthorized):
            provider.verify(json_callback(body, headers={"X-Hub-Signature-256": header}))


class TestWhatsAppNormalize:
    """``WhatsAppProvider.normalize``."""

    @pytest.mark.parametrize(
        ("word", "expected"),
        [
            ("sent", DeliveryStatus.SENT),
            ("delivered", DeliveryStatus.DELIVERED),
            ("read", DeliveryStatus.READ),
            ("failed", DeliveryStatus.ERROR),
            ("deleted", DeliveryStatus.UNKNOWN),
            ("warning", DeliveryStatus.UNKNOWN),
        ],
    )
    def test_status_table(self, provider: WhatsAppProvider, word: str, expected: DeliveryStatus) -> None:
        """Every WhatsApp status maps per the module table, timed by its unix timestamp."""
        [event] = provider.normalize(signed(webhook(messages_change(statuses=[status(word)]))))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id) == (
            expected,
            word,
            "whatsapp",
            WAMID,
        )
        assert event.id == f"whatsapp:{WAMID}:{word}"
        assert event.occurred_at == dt.datetime(2024, 5, 1, 11, 59, 30, tzinfo=dt.UTC)

    def test_failed_error(self, provider: WhatsAppProvider) -> None:
        """A failed status carries errors[0] as the event error and its title as the description."""
        error = {
            "code": 131047,
            "title": "Re-engagement message",
            "message": "Re-engagement message",
            "error_data": {"details": "More than 24 hours have passed since the customer last replied."},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
        [event] = provider.normalize(
            signed(webhook(messages_change(statuses=[status("failed", errors=[error])])))
        )
        assert isinstance(event, StatusReport)
        assert event.error == EventError(code="131047", message="Re-engagement message")
        assert event.description == "Re-engagement message"

    def test_batch(self, provider: WhatsAppProvider) -> None:
        """All entries and changes are read in order; changes of other fields yield nothing."""
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "1", "changes": [messages_change(statuses=[status("sent"), status("delivered")])]},
                {
                    "id": "2",
                    "changes": [
                        {"field": "message_template_status_update", "value": {"event": "APPROVED"}},
                        messages_change(
                            messages=[message("text", {"body": "hi"})], statuses=[status("read")]
                        ),
                    ],
                },
            ],
        }
        events = provider.normalize(signed(payload))
        assert [type(e).__name__ for e in events] == [
            "StatusReport",
            "StatusReport",
            "StatusReport",
            "Inbound",
        ]
        assert [e.raw_status for e in events if isinstance(e, StatusReport)] == ["sent", "delivered", "read"]

    def test_inbound_text(self, provider: WhatsAppProvider) -> None:
        """A text message is an Inbound event between E.164 numbers."""
        [event] = provider.normalize(
            signed(webhook(messages_change(messages=[message("text", {"body": "Hola"})])))
        )
        assert event == Inbound(
            id=f"whatsapp:in:{INBOUND_ID}",
            occurred_at=dt.datetime(2024, 5, 1, 11, 59, 30, tzinfo=dt.UTC),
            channel=Channel.WHATSAPP,
            source="+16315551181",
            destination="+15550783881",
            text="Hola",
            message_type="TEXT",
            provider="whatsapp",
            provider_message_id=INBOUND_ID,
        )

    @pytest.mark.parametrize(
        ("kind", "content", "text", "media"),
        [
            (
                "image",
                {"caption": "Receipt", "mime_type": "image/jpeg", "sha256": "abc", "id": "2754859441498128"},
                "Receipt",
                (
                    {
                        "type": "image",
                        "id": "2754859441498128",
                        "mimeType": "image/jpeg",
                        "caption": "Receipt",
                    },
                ),
            ),
            (
                "document",
                {"filename": "invoice.pdf", "mime_type": "application/pdf", "sha256": "abc", "id": "77"},
                "",
                ({"type": "document", "id": "77", "mimeType": "application/pdf"},),
            ),
            (
                "audio",
                {"mime_type": "audio/ogg; codecs=opus", "id": "5"},
                "",
                ({"type": "audio", "id": "5", "mimeType": "audio/ogg; codecs=opus"},),
            ),
            (
                "video",
                {"mime_type": "video/mp4", "id": "6"},
                "",
                ({"type": "video", "id": "6", "mimeType": "video/mp4"},),
            ),
            (
                "sticker",
                {"mime_type": "image/webp", "id": "7", "animated": False},
                "",
                ({"type": "sticker", "id": "7", "mimeType": "image/webp"},),
            ),
            ("button", {"text": "No", "payload": "No-Button-Payload"}, "No", ()),
            (
                "interactive",
                {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes"}},
                "Yes",
                (),
            ),
            (
                "interactive",
                {"type": "list_reply", "list_reply": {"id": "r2", "title": "Tuesday"}},
                "Tuesday",
                (),
            ),
            ("reaction", {"message_id": WAMID, "emoji": "\U0001f44d"}, "\U0001f44d", ()),
            ("location", {"latitude": 38.9, "longitude": -77.0, "name": "Office"}, "", ()),
            ("unsupported", {}, "", ()),
        ],
    )
    def test_inbound_types(
        self,
        provider: WhatsAppProvider,
        kind: str,
        content: Any,
        text: str,
        media: tuple[dict[str, str], ...],
    ) -> None:
        """Each inbound type yields the text a person would read, its upper-cased type and any media."""
        [event] = provider.normalize(signed(webhook(messages_change(messages=[message(kind, content)]))))
        assert isinstance(event, Inbound)
        assert (event.text, event.message_type, event.media) == (text, kind.upper(), media)

    def test_formatted_display_number(self, provider: WhatsAppProvider) -> None:
        """A display number with spaces and dashes is normalised to E.164."""
        change = messages_change(messages=[message("text", {"body": "x"})])
        change["value"]["metadata"] = {"display_phone_number": "+1 555-078-3881", "phone_number_id": "1"}
        [event] = provider.normalize(signed(webhook(change)))
        assert isinstance(event, Inbound)
        assert event.destination == "+15550783881"

    def test_missing_timestamp(self, provider: WhatsAppProvider) -> None:
        """Without a usable timestamp occurred_at is the arrival time."""
        [event] = provider.normalize(
            signed(webhook(messages_change(statuses=[status("sent", timestamp="soon")])))
        )
        assert event.occurred_at == RECEIVED_AT

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json",
            b"[]",
            b"{}",
            b'{"entry": {}}',
            b'{"entry": [1]}',
            b'{"entry": [{"changes": [1]}]}',
            change_value([]),
            change_value({"statuses": {}}),
            change_value({"statuses": [{"status": "sent"}]}),
            change_value({"statuses": [{"id": "w1"}]}),
            change_value({"statuses": [{"id": "w1", "status": "failed", "errors": [1]}]}),
            change_value({"messages": [{"id": "m", "from": "1555", "type": "text"}]}),
            change_value({"metadata": METADATA, "messages": [{"id": "m", "type": "text"}]}),
            change_value({"metadata": METADATA, "messages": [{"id": "m", "from": "abc", "type": "text"}]}),
            change_value({"metadata": METADATA, "messages": [{"id": "m", "from": "1555123", "type": ""}]}),
            change_value({"metadata": {"display_phone_number": "n/a"}, "messages": [message("text", {})]}),
        ],
    )
    def test_malformed(self, provider: WhatsAppProvider, payload: bytes) -> None:
        """Unreadable or incomplete webhooks are InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(signed(payload))


class TestWhatsAppReplies:
    """``accepted``."""

    def test_accepted(self, provider: WhatsAppProvider) -> None:
        """The reply is an empty 200."""
        assert provider.accepted([]) is OK
