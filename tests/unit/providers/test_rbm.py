"""Google RBM webhooks: setup handshake, X-Goog-Signature, user/server events and user messages."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import orjson
import pytest

from qlara_events.domain.events import Inbound, StatusReport
from qlara_events.domain.status import Channel, DeliveryStatus
from qlara_events.errors import InvalidEvent, Unauthorized
from qlara_events.providers.base import OK, Callback, Reply
from qlara_events.providers.rbm import RbmProvider

from signing import RECEIVED_AT, json_callback, make_callback, rbm_envelope, rbm_signature

CLIENT_TOKEN = "rbm-client-token-5f0c9e"
AGENT = "qlara-demo-agent@rbm.goog"
PHONE = "+12223334444"
MESSAGE_ID = "0b1e6f5a-8c2d-4e7f-9a1b-3c4d5e6f7a8b"
SEND_TIME = "2024-05-01T11:59:30.123456789Z"
AT = dt.datetime(2024, 5, 1, 11, 59, 30, 123456, tzinfo=dt.UTC)


def user_event(kind: str, **extra: Any) -> dict[str, Any]:
    out = {
        "senderPhoneNumber": PHONE,
        "eventType": kind,
        "eventId": f"MxEv{kind[:3]}8t7SjMSzGXJAGdXsDg",
        "messageId": MESSAGE_ID,
        "sendTime": SEND_TIME,
        "agentId": AGENT,
    }
    out.update(extra)
    return out


def server_event(kind: str) -> dict[str, Any]:
    return {
        "phoneNumber": PHONE,
        "messageId": MESSAGE_ID,
        "agentId": AGENT,
        "eventType": kind,
        "eventId": f"SrvEv{kind[-7:]}",
        "sendTime": SEND_TIME,
    }


def user_message(**content: Any) -> dict[str, Any]:
    return {
        "senderPhoneNumber": PHONE,
        "messageId": "MsUsrMsg0001",
        "sendTime": SEND_TIME,
        "conversationId": PHONE,
        "agentId": AGENT,
        **content,
    }


def signed(data: object, token: str = CLIENT_TOKEN) -> Callback:
    body, raw = rbm_envelope(data)
    return json_callback(body, headers={"X-Goog-Signature": rbm_signature(token, raw)})


@pytest.fixture
def provider() -> RbmProvider:
    return RbmProvider(client_token=CLIENT_TOKEN)


class TestRbmHandshake:
    """``RbmProvider.handshake``."""

    def test_setup(self, provider: RbmProvider) -> None:
        """Google's setup POST with the right clientToken gets the secret back."""
        reply = provider.handshake(json_callback({"clientToken": CLIENT_TOKEN, "secret": "7482913620"}))
        assert reply == Reply(200, b"7482913620")

    def test_wrong_token(self, provider: RbmProvider) -> None:
        """A setup POST with another clientToken is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.handshake(json_callback({"clientToken": "guess", "secret": "7482913620"}))

    @pytest.mark.parametrize(
        "cb",
        [
            signed(user_event("DELIVERED")),
            json_callback({"clientToken": CLIENT_TOKEN, "secret": "1", "message": {"data": ""}}),
            json_callback({"clientToken": CLIENT_TOKEN}),
            json_callback(b"not json"),
            json_callback(b"[1]"),
            make_callback(method="GET"),
        ],
    )
    def test_not_a_handshake(self, provider: RbmProvider, cb: Callback) -> None:
        """Envelopes, incomplete objects, non-JSON and GETs are not handshakes."""
        assert provider.handshake(cb) is None


class TestRbmVerify:
    """``RbmProvider.verify``."""

    def test_signed(self, provider: RbmProvider) -> None:
        """An envelope whose decoded data is signed with the client token is accepted."""
        provider.verify(signed(user_event("READ")))

    def test_missing(self, provider: RbmProvider) -> None:
        """An envelope without X-Goog-Signature is Unauthorized."""
        body, _ = rbm_envelope(user_event("READ"))
        with pytest.raises(Unauthorized):
            provider.verify(json_callback(body))

    def test_forged(self, provider: RbmProvider) -> None:
        """A signature made with another token is Unauthorized."""
        with pytest.raises(Unauthorized):
            provider.verify(signed(user_event("READ"), token="other"))

    def test_swapped_data(self, provider: RbmProvider) -> None:
        """A valid signature of one event does not verify another event's data."""
        body, _ = rbm_envelope(user_event("READ"))
        _, other = rbm_envelope(user_event("DELIVERED"))
        with pytest.raises(Unauthorized):
            provider.verify(
                json_callback(body, headers={"X-Goog-Signature": rbm_signature(CLIENT_TOKEN, other)})
            )

    def test_signature_over_encoded_data_rejected(self, provider: RbmProvider) -> None:
        """Google signs the decoded bytes: a signature over the base64 text does not verify."""
        body, raw = rbm_envelope(user_event("READ"))
        header = rbm_signature(CLIENT_TOKEN, base64.b64encode(raw))
        with pytest.raises(Unauthorized):
            provider.verify(json_callback(body, headers={"X-Goog-Signature": header}))


class TestRbmNormalize:
    """``RbmProvider.normalize``."""

    @pytest.mark.parametrize(
        ("data", "expected", "event_id"),
        [
            (user_event("DELIVERED"), DeliveryStatus.DELIVERED, "rbm:MxEvDEL8t7SjMSzGXJAGdXsDg"),
            (user_event("READ"), DeliveryStatus.READ, "rbm:MxEvREA8t7SjMSzGXJAGdXsDg"),
            (server_event("TTL_EXPIRATION_REVOKED"), DeliveryStatus.EXPIRED, "rbm:SrvEvREVOKED"),
            (server_event("TTL_EXPIRATION_REVOKE_FAILED"), DeliveryStatus.UNKNOWN, "rbm:SrvEv_FAILED"),
            (user_event("SOMETHING_NEW"), DeliveryStatus.UNKNOWN, "rbm:MxEvSOM8t7SjMSzGXJAGdXsDg"),
        ],
    )
    def test_status_table(
        self, provider: RbmProvider, data: dict[str, Any], expected: DeliveryStatus, event_id: str
    ) -> None:
        """Each event type maps per the module table; ids come from eventId; sendTime keeps microseconds."""
        [event] = provider.normalize(signed(data))
        assert isinstance(event, StatusReport)
        assert (event.status, event.raw_status, event.provider, event.provider_message_id, event.id) == (
            expected,
            data["eventType"],
            "rbm",
            MESSAGE_ID,
            event_id,
        )
        assert event.occurred_at == AT

    def test_id_without_event_id(self, provider: RbmProvider) -> None:
        """Without eventId the id is built from the message id and the event type."""
        data = user_event("DELIVERED")
        del data["eventId"]
        [event] = provider.normalize(signed(data))
        assert event.id == f"rbm:{MESSAGE_ID}:DELIVERED"

    @pytest.mark.parametrize("kind", ["IS_TYPING", "SUBSCRIBE", "UNSUBSCRIBE"])
    def test_ignored_events(self, provider: RbmProvider, kind: str) -> None:
        """Typing indicators and consent events carry no delivery status."""
        data = user_event(kind)
        del data["messageId"]
        assert provider.normalize(signed(data)) == []

    def test_other_notifications(self, provider: RbmProvider) -> None:
        """Authentic notifications that are neither events nor messages (agent launch state) yield nothing."""
        data = {"agentId": AGENT, "eventId": "e1", "newLaunchState": "LAUNCHED", "sendTime": SEND_TIME}
        assert provider.normalize(signed(data)) == []

    def test_text_message(self, provider: RbmProvider) -> None:
        """A user text is an Inbound RCS event from the user to the agent."""
        [event] = provider.normalize(signed(user_message(text="Hello agent")))
        assert event == Inbound(
            id="rbm:in:MsUsrMsg0001",
            occurred_at=AT,
            channel=Channel.RCS,
            source=PHONE,
            destination=AGENT,
            text="Hello agent",
            message_type="TEXT",
            provider="rbm",
            provider_message_id="MsUsrMsg0001",
        )

    @pytest.mark.parametrize(
        ("content", "text", "message_type", "media"),
        [
            (
                {"suggestionResponse": {"postbackData": "reply_yes", "text": "Yes", "type": "REPLY"}},
                "Yes",
                "SUGGESTION_RESPONSE",
                (),
            ),
            (
                {"location": {"latitude": 37.4220188, "longitude": -122.0844786}},
                "",
                "LOCATION",
                ({"type": "location", "latitude": 37.4220188, "longitude": -122.0844786},),
            ),
            (
                {
                    "userFile": {
                        "thumbnail": {"mimeType": "image/jpeg", "fileUri": "https://rcs.example/t.jpg"},
                        "payload": {
                            "mimeType": "image/jpeg",
                            "fileSizeBytes": 12345,
                            "fileUri": "https://rcs.example/photo.jpg",
                            "fileName": "photo.jpg",
                        },
                    }
                },
                "",
                "FILE",
                (
                    {
                        "type": "file",
                        "uri": "https://rcs.example/photo.jpg",
                        "mimeType": "image/jpeg",
                        "fileName": "photo.jpg",
                    },
                ),
            ),
        ],
    )
    def test_user_message_types(
        self,
        provider: RbmProvider,
        content: dict[str, Any],
        text: str,
        message_type: str,
        media: tuple[Any, ...],
    ) -> None:
        """Suggestion replies, locations and files are Inbound events with their text, type and media."""
        [event] = provider.normalize(signed(user_message(**content)))
        assert isinstance(event, Inbound)
        assert (event.text, event.message_type, event.media) == (text, message_type, media)

    def test_missing_send_time(self, provider: RbmProvider) -> None:
        """Without a usable sendTime occurred_at is the arrival time."""
        [event] = provider.normalize(signed(user_event("READ", sendTime="2024-13-45T99:00:00Z")))
        assert event.occurred_at == RECEIVED_AT

    @pytest.mark.parametrize(
        "cb",
        [
            json_callback(b"not json"),
            json_callback({"subscription": "s"}),
            json_callback({"message": "x"}),
            json_callback({"message": {"data": 5}}),
            json_callback({"message": {"data": "***not base64***"}}),
            json_callback({"message": {"data": base64.b64encode(b"\xff\xfe").decode()}}),
            json_callback({"message": {"data": base64.b64encode(b"[1, 2]").decode()}}),
            signed({"eventType": "DELIVERED", "eventId": "e"}),
            signed({"eventType": 7, "messageId": MESSAGE_ID}),
            signed(user_message(text="hi", messageId=None)),
            signed({"text": "hi", "messageId": "m", "agentId": AGENT}),
            signed({"text": "hi", "messageId": "m", "senderPhoneNumber": PHONE}),
        ],
    )
    def test_malformed(self, provider: RbmProvider, cb: Callback) -> None:
        """Unreadable envelopes and incomplete events are InvalidEvent."""
        with pytest.raises(InvalidEvent):
            provider.normalize(cb)

    def test_url_safe_base64(self, provider: RbmProvider) -> None:
        """URL-safe base64 data (some push relays re-encode it) decodes the same."""
        raw = orjson.dumps(user_event("READ", agentId="agent~~~>>>@rbm.goog"))
        encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        [event] = provider.normalize(json_callback({"message": {"data": encoded}}))
        assert isinstance(event, StatusReport)
        assert event.status == DeliveryStatus.READ


class TestRbmReplies:
    """``accepted``."""

    def test_accepted(self, provider: RbmProvider) -> None:
        """The reply is an empty 200."""
        assert provider.accepted([]) is OK
