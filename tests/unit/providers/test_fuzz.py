"""Property tests: whatever a caller sends, providers answer with canonical events or a QlaraError.

``normalize`` must return events that survive the canonical round trip (``to_json`` → JSON bytes →
``parse_event``) or raise :class:`InvalidEvent`; nothing else may escape, whatever the bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlara_events.domain.events import Event, parse_event, to_json
from qlara_events.errors import Forbidden, InvalidEvent, Unauthorized
from qlara_events.providers import build_providers
from qlara_events.providers.base import Callback, Provider

from signing import make_callback

PROVIDERS: dict[str, Provider] = build_providers(
    twilio_auth_token="t",
    vonage_signature_secret="v",
    vonage_signature_method="sha256",
    infobip_token="i",
    whatsapp_app_secret="w",
    whatsapp_verify_token="wv",
    rbm_client_token="r",
    jasmin_token="j",
)
FORM_PROVIDERS = ("twilio", "vonage", "jasmin")
JSON_PROVIDERS = ("vonage", "infobip", "whatsapp")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Field names and values the providers look at, mixed with arbitrary text, so that generated input often
# gets past the first checks and exercises the deeper branches.
KEYS = [
    "MessageSid",
    "SmsSid",
    "MessageStatus",
    "SmsStatus",
    "ErrorCode",
    "ErrorMessage",
    "RawDlrDoneDate",
    "Body",
    "From",
    "To",
    "NumMedia",
    "MediaUrl0",
    "MediaContentType0",
    "messageId",
    "status",
    "err-code",
    "message-timestamp",
    "scts",
    "sig",
    "timestamp",
    "id",
    "level",
    "message_status",
    "err",
    "donedate",
    "text",
    "short_message",
    "results",
    "groupId",
    "name",
    "description",
    "error",
    "permanent",
    "doneAt",
    "seenAt",
    "object",
    "entry",
    "changes",
    "field",
    "value",
    "statuses",
    "messages",
    "metadata",
    "display_phone_number",
    "errors",
    "code",
    "title",
    "message",
    "from",
    "type",
    "body",
    "caption",
    "image",
    "interactive",
    "button_reply",
    "button",
    "reaction",
    "emoji",
    "mime_type",
    "eventType",
    "eventId",
    "sendTime",
    "senderPhoneNumber",
    "phoneNumber",
    "agentId",
    "suggestionResponse",
    "location",
    "latitude",
    "longitude",
    "userFile",
    "payload",
    "fileUri",
]
VALUES = [
    "delivered",
    "received",
    "failed",
    "read",
    "sent",
    "queued",
    "partially_delivered",
    "messages",
    "accepted",
    "buffered",
    "expired",
    "rejected",
    "unknown",
    "deleted",
    "text",
    "image",
    "interactive",
    "DELIVRD",
    "UNDELIV",
    "ESME_ROK",
    "ESME_RTHROTTLED",
    "1",
    "2",
    "3",
    "0",
    "000",
    "30003",
    "DELIVERED",
    "READ",
    "IS_TYPING",
    "TTL_EXPIRATION_REVOKED",
    "TTL_EXPIRATION_REVOKE_FAILED",
    "DELIVERED_TO_HANDSET",
    "+15551234567",
    "whatsapp:+15551234567",
    "16315551181",
    "SM123",
    "2405011159",
    "1714564770",
    "2024-05-01T11:59:30.123456789Z",
    "2019-11-09T16:00:00.000+0000",
    "2024-05-01 11:59:30",
    "id:abc stat:DELIVRD err:000 done date:2405011159",
    "image/jpeg",
]

keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # what JSON encoders carry
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(VALUES),
    st.text(max_size=40),
    st.text(min_size=190, max_size=260),  # around the 200-character id limit
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)
form_pairs = st.lists(
    st.tuples(
        keys, st.one_of(st.sampled_from(VALUES), st.text(max_size=40), st.text(min_size=190, max_size=260))
    ),
    max_size=12,
)
content_types = st.sampled_from(["", "application/json", "application/x-www-form-urlencoded", "text/plain"])


def check(provider: Provider, cb: Callback) -> list[Event]:
    """normalize either raises InvalidEvent or returns events that survive the canonical round trip."""
    try:
        events = provider.normalize(cb)
    except InvalidEvent:
        return []
    assert isinstance(events, list)
    for event in events:
        assert event.provider == provider.name
        assert parse_event(to_json(event)) == event
        assert parse_event(orjson.loads(orjson.dumps(to_json(event)))) == event
    return events


def form_body(pairs: list[tuple[str, str]]) -> bytes:
    from urllib.parse import urlencode

    return urlencode(pairs).encode()


class TestFuzzNormalize:
    """``normalize`` on generated input."""

    @pytest.mark.parametrize("name", sorted(PROVIDERS))
    @FUZZ
    @given(body=st.binary(max_size=512), content_type=content_types, method=st.sampled_from(["POST", "GET"]))
    def test_arbitrary_bytes(self, name: str, body: bytes, content_type: str, method: str) -> None:
        """Arbitrary bytes give events or InvalidEvent, never another exception."""
        check(PROVIDERS[name], make_callback(method=method, body=body, content_type=content_type))

    @pytest.mark.parametrize("name", JSON_PROVIDERS)
    @FUZZ
    @given(payload=json_values)
    def test_arbitrary_json(self, name: str, payload: Any) -> None:
        """Arbitrary JSON documents give events or InvalidEvent."""
        check(PROVIDERS[name], make_callback(body=orjson.dumps(payload), content_type="application/json"))

    @FUZZ
    @given(
        value=st.dictionaries(st.sampled_from(["metadata", "statuses", "messages"]), json_values, max_size=3),
        field=st.sampled_from(["messages", "other"]),
    )
    def test_whatsapp_shaped(self, value: dict[str, Any], field: str) -> None:
        """WhatsApp webhooks with the right skeleton and arbitrary contents give events or InvalidEvent."""
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}],
        }
        check(
            PROVIDERS["whatsapp"], make_callback(body=orjson.dumps(payload), content_type="application/json")
        )

    @FUZZ
    @given(results=st.lists(st.dictionaries(keys, json_values, max_size=8), max_size=4))
    def test_infobip_shaped(self, results: list[dict[str, Any]]) -> None:
        """Infobip batches of arbitrary report objects give events or InvalidEvent."""
        body = orjson.dumps({"results": results})
        check(PROVIDERS["infobip"], make_callback(body=body, content_type="application/json"))

    @FUZZ
    @given(
        data=st.one_of(json_values, st.dictionaries(keys, json_values, max_size=8)),
        raw=st.binary(max_size=64),
    )
    def test_rbm_envelopes(self, data: Any, raw: bytes) -> None:
        """RBM envelopes around arbitrary JSON (or arbitrary bytes) give events or InvalidEvent."""
        for inner in (orjson.dumps(data), raw):
            envelope = {"message": {"data": base64.b64encode(inner).decode(), "messageId": "1"}}
            check(
                PROVIDERS["rbm"], make_callback(body=orjson.dumps(envelope), content_type="application/json")
            )

    @pytest.mark.parametrize("name", FORM_PROVIDERS)
    @FUZZ
    @given(pairs=form_pairs)
    def test_arbitrary_form(self, name: str, pairs: list[tuple[str, str]]) -> None:
        """Arbitrary form pairs, posted or in the query string, give events or InvalidEvent."""
        provider = PROVIDERS[name]
        check(
            provider, make_callback(body=form_body(pairs), content_type="application/x-www-form-urlencoded")
        )
        check(provider, make_callback(method="GET", query=pairs))


class TestFuzzAuthentication:
    """``handshake`` and ``verify`` on generated input."""

    @pytest.mark.parametrize("name", sorted(PROVIDERS))
    @FUZZ
    @given(
        body=st.one_of(st.binary(max_size=256), json_values.map(orjson.dumps)),
        headers=st.dictionaries(
            st.sampled_from(
                ["x-twilio-signature", "x-hub-signature-256", "x-goog-signature", "authorization", "x-other"]
            ),
            st.text(max_size=80),
            max_size=3,
        ),
        query=form_pairs,
        method=st.sampled_from(["POST", "GET"]),
    )
    def test_only_auth_errors(
        self, name: str, body: bytes, headers: dict[str, str], query: list[tuple[str, str]], method: str
    ) -> None:
        """Handshake and verify answer, or raise Unauthorized/Forbidden/InvalidEvent; nothing else escapes."""
        provider = PROVIDERS[name]
        cb = make_callback(
            method=method, body=body, headers=headers, query=query, content_type="application/json"
        )
        try:
            provider.handshake(cb)
        except (Unauthorized, Forbidden):
            pass
        try:
            provider.verify(cb)
        except (Unauthorized, InvalidEvent):
            pass


class TestBuildProviders:
    """``build_providers``."""

    def test_all(self) -> None:
        """Every provider with its secret set is built under its own name."""
        assert {name: p.name for name, p in PROVIDERS.items()} == {
            "twilio": "twilio",
            "vonage": "vonage",
            "infobip": "infobip",
            "whatsapp": "whatsapp",
            "rbm": "rbm",
            "jasmin": "jasmin",
        }

    def test_none(self) -> None:
        """Without secrets nothing is enabled (empty strings count as unset)."""
        assert build_providers() == {}
        assert build_providers(twilio_auth_token="", infobip_token="", jasmin_token="") == {}

    def test_vonage_needs_its_secret(self) -> None:
        """Vonage is enabled by its signature secret, not by choosing a method."""
        assert build_providers(vonage_signature_method="sha512") == {}
        assert list(build_providers(vonage_signature_secret="s", vonage_signature_method="sha512")) == [
            "vonage"
        ]

    def test_whatsapp_needs_both(self) -> None:
        """WhatsApp needs both the app secret and the verify token."""
        assert build_providers(whatsapp_app_secret="s") == {}
        assert build_providers(whatsapp_verify_token="t") == {}
        assert list(build_providers(whatsapp_app_secret="s", whatsapp_verify_token="t")) == ["whatsapp"]
