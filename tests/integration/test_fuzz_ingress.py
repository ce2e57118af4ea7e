"""Property tests through the real HTTP ingress: signed garbage is accepted or rejected, never a 5xx.

Every request here is authentic (signed the way its provider signs, or Standard Webhooks-signed for
canonical events) and carries an arbitrary body: bytes, JSON, form pairs. The ingress must answer 200/202
(events, or nothing to record) or 400 (unreadable), 4xx always with the JSON error body, and every 400
must be kept, body and all, in ``qlara.ingest-rejected``. The unit-level properties (normalisers and the
canonical parser on their own) live in tests/unit/providers/test_fuzz.py and tests/unit/domain/.

pytest-asyncio runs each hypothesis example on the session loop, so the live server serves while the
example awaits its request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlara_events.config import DEV_SECRETS

from support.live import LiveServer, sign_canonical, uid
from support.rejected import RejectedTail, rejected_tail
from unit.providers.signing import (
    basic_auth,
    rbm_envelope,
    rbm_signature,
    twilio_signature,
    vonage_signature,
    whatsapp_signature,
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: Examples per endpoint: enough to reach the normalisers' branches, small enough for a quick run.
FUZZ = settings(max_examples=40, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: What each endpoint may answer to an authentic request.
ALLOWED = {200, 202, 400}

#: Field names and values the providers read, mixed with arbitrary text so that generated bodies often get
#: past the first checks.
PROVIDER_KEYS = ["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "Body", "From", "To",
                 "messageId", "status", "err-code", "message-timestamp", "scts", "id", "level", "message_status",
                 "err", "text", "results", "groupId", "name", "error", "doneAt", "object", "entry", "changes",
                 "field", "value", "statuses", "messages", "recipient_id", "timestamp", "type", "eventType",
                 "eventId", "sendTime", "senderPhoneNumber", "agentId"]
PROVIDER_VALUES = ["delivered", "failed", "read", "sent", "undelivered", "DELIVRD", "UNDELIV", "1", "2", "0",
                   "DELIVERED", "READ", "DELIVERED_TO_HANDSET", "whatsapp_business_account", "statuses", "SM123",
                   "+15551234567", "1714564770", "2024-05-01T11:59:30.123Z",
                   "id:abc stat:DELIVRD err:000 done date:2405011159"]
keys = st.sampled_from(PROVIDER_KEYS) | st.text(max_size=12)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(PROVIDER_VALUES)
           | st.text(max_size=40) | st.text(min_size=190, max_size=260))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
                           max_leaves=30)
form_pairs = st.lists(st.tuples(keys, st.sampled_from(PROVIDER_VALUES) | st.text(max_size=40)), max_size=10)

#: Canonical-event field names and values, so that generated JSON often gets past the first checks.
EVENT_KEYS = ["type", "id", "occurredAt", "accountId", "channel", "messageId", "customerMessageId", "provider",
              "providerMessageId", "destination", "status", "parts", "part", "partProviderMessageIds", "error",
              "code", "message", "sender", "text", "source"]
EVENT_VALUES = ["message.submitted", "message.status", "message.inbound", "SMS", "RCS", "WHATSAPP", "DELIVERED",
                "READ", "FAILED", "twilio", "2026-04-02T09:00:00Z", "5b0e2d7c-9a41-4f0b-b3c2-6f1d2a7e9c10",
                "+393331112233"]
event_objects = st.dictionaries(
    st.sampled_from(EVENT_KEYS) | keys,
    st.sampled_from(EVENT_VALUES) | json_values,
    max_size=12,
)
canonical_json = st.one_of(event_objects, st.lists(event_objects, max_size=4), json_values)
raw_bytes = st.binary(max_size=1500)

# Shaped bodies: the fields each endpoint requires, with generated values and extra arbitrary members, so
# that the accepting path (produce, then 200/202) is fuzzed as well as the rejecting one.
ids = (st.sampled_from(["SM123", "wamid.X1", "5b0e2d7c-9a41-4f0b-b3c2-6f1d2a7e9c10"]) | st.text(min_size=1, max_size=40)
       | st.text(max_size=210))
words = st.sampled_from(PROVIDER_VALUES) | st.text(max_size=20)


def _shaped_form(*names: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.builds(lambda i, w, extra: [(names[0], i), (names[1], w), *extra], ids, words, form_pairs)


def _with_extra(required: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda base, extra: {**extra, **base}, required, st.dictionaries(keys, json_values, max_size=4))


infobip_shaped = st.builds(lambda r: {"results": [r]}, _with_extra(st.fixed_dictionaries(
    {"messageId": ids, "status": st.fixed_dictionaries({"groupId": st.integers(0, 5), "name": words})})))
whatsapp_shaped = st.builds(
    lambda status: {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [status]}}]}]},
    _with_extra(st.fixed_dictionaries({"id": ids, "status": words, "timestamp": st.sampled_from(["1714564770"])
                                       | st.text(max_size=12), "recipient_id": st.text(max_size=15)})))
rbm_shaped = _with_extra(st.fixed_dictionaries({"eventType": words, "messageId": ids, "eventId": ids,
                                                "sendTime": st.sampled_from(["2024-05-01T11:59:30.123Z"]) | words}))
canonical_shaped = _with_extra(st.fixed_dictionaries({
    "type": st.just("message.status"), "id": ids, "occurredAt": st.sampled_from(["2026-04-02T09:00:00Z"]) | words,
    "status": st.sampled_from(["DELIVERED", "READ", "FAILED", "SENT"]) | words, "provider": st.just("twilio"),
    "providerMessageId": ids}))


# A request: (query parameters, body, headers); the path is the endpoint's.
Request = tuple[dict[str, str], bytes, dict[str, str]]


def _as_bytes(payload: bytes | object) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


def twilio(server: LiveServer, pairs: list[tuple[str, str]]) -> Request:
    """Form pairs with X-Twilio-Signature over the public URL and every parameter."""
    url = server.settings.base_url + "/ingest/v1/providers/twilio"
    sig = twilio_signature(DEV_SECRETS["QLARA_TWILIO_AUTH_TOKEN"], url, pairs)
    return {}, urlencode(pairs).encode(), {"X-Twilio-Signature": sig, "Content-Type": FORM}


def vonage(server: LiveServer, pairs: list[tuple[str, str]]) -> Request:
    """Form pairs plus a fresh ``timestamp`` and the ``sig`` over them (first occurrence of a name wins)."""
    fields: dict[str, str] = {}
    for k, v in pairs:
        if k not in ("sig", "timestamp"):
            fields.setdefault(k, v)
    fields["timestamp"] = str(int(time.time()))
    fields["sig"] = vonage_signature(DEV_SECRETS["QLARA_VONAGE_SIGNATURE_SECRET"],
                                     server.settings.vonage_signature_method, fields)
    return {}, urlencode(fields).encode(), {"Content-Type": FORM}


def infobip(server: LiveServer, payload: bytes | object) -> Request:
    """Any body with the Basic credentials Infobip sends."""
    auth = basic_auth("qlara", DEV_SECRETS["QLARA_INFOBIP_TOKEN"])
    return {}, _as_bytes(payload), {"Authorization": auth, "Content-Type": JSON}


def whatsapp(server: LiveServer, payload: bytes | object) -> Request:
    """Any body with X-Hub-Signature-256 over its bytes."""
    body = _as_bytes(payload)
    return {}, body, {"X-Hub-Signature-256": whatsapp_signature(DEV_SECRETS["QLARA_WHATSAPP_APP_SECRET"], body),
                      "Content-Type": JSON}


def rbm(server: LiveServer, data: bytes | object) -> Request:
    """A Pub/Sub envelope around any non-empty data, X-Goog-Signature over the data."""
    envelope, raw = rbm_envelope(data, message_id=uid())
    return {}, envelope, {"X-Goog-Signature": rbm_signature(DEV_SECRETS["QLARA_RBM_CLIENT_TOKEN"], raw),
                          "Content-Type": JSON}


def jasmin(server: LiveServer, payload: bytes | list[tuple[str, str]]) -> Request:
    """Form pairs or any bytes, with the shared ``?token=``."""
    body = payload if isinstance(payload, bytes) else urlencode(payload).encode()
    return {"token": DEV_SECRETS["QLARA_JASMIN_TOKEN"]}, body, {"Content-Type": FORM}


def canonical(server: LiveServer, payload: bytes | object) -> Request:
    """Any body, Standard Webhooks-signed with the ingest secret."""
    body = _as_bytes(payload)
    return {}, body, sign_canonical(server.settings, body, msg_id=uid("msg_"))


async def _send(http: aiohttp.ClientSession, server: LiveServer, path: str, request: Request) -> int:
    """POST the request; check the answer is allowed and 4xx carry the JSON error body."""
    query, body, headers = request
    async with http.post(f"{server.url}{path}", params=query, data=body, headers=headers) as resp:
        raw = await resp.read()
        assert resp.status in ALLOWED, (resp.status, raw[:300])
        if resp.status >= 400:
            assert resp.content_type == JSON
            error = orjson.loads(raw)
            assert error["status"] == resp.status
            assert isinstance(error["error"], str)
            assert isinstance(error["message"], str) and error["message"]
        return resp.status


#: endpoint name (the ``via`` of its rejects), path, signer, payload strategy
ENDPOINTS: list[tuple[str, str, Callable[[LiveServer, Any], Request], st.SearchStrategy[Any]]] = [
    ("twilio", "/ingest/v1/providers/twilio", twilio, form_pairs | _shaped_form("MessageSid", "MessageStatus")),
    ("vonage", "/ingest/v1/providers/vonage", vonage, form_pairs | _shaped_form("messageId", "status")),
    ("infobip", "/ingest/v1/providers/infobip", infobip, raw_bytes | json_values | infobip_shaped),
    ("whatsapp", "/ingest/v1/providers/whatsapp", whatsapp, raw_bytes | json_values | whatsapp_shaped),
    ("rbm", "/ingest/v1/providers/rbm", rbm, st.binary(min_size=1, max_size=1500) | json_values | rbm_shaped),
    ("jasmin", "/ingest/v1/providers/jasmin", jasmin, raw_bytes | form_pairs | _shaped_form("id", "message_status")),
    ("canonical", "/ingest/v1/events", canonical,
     raw_bytes | canonical_json | canonical_shaped | st.lists(canonical_shaped, min_size=1, max_size=5)),
]


@pytest.fixture(scope="module")
async def rejected(server: LiveServer) -> AsyncIterator[RejectedTail]:
    """The rejected-payload topic of the live server, read as the tests go."""
    async with rejected_tail(server.settings) as tail:
        yield tail


@pytest.mark.parametrize(("via", "path", "sign", "payloads"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
class TestSignedGarbage:
    """An authentic request with any body gets 200/202 or a kept 400, never anything else."""

    @FUZZ
    @given(data=st.data())
    async def test_answers_and_keeps_rejects(self, http: aiohttp.ClientSession, server: LiveServer,
                                             rejected: RejectedTail, via: str, path: str,
                                             sign: Callable[[LiveServer, Any], Request],
                                             payloads: st.SearchStrategy[Any], data: st.DataObject) -> None:
        """200/202, or 400 with the JSON error body and the request body kept in ingest-rejected."""
        request = sign(server, data.draw(payloads, label="payload"))
        status = await _send(http, server, path, request)
        if status == 400:
            kept = await rejected.wait_for(via, request[1])
            assert kept[0]["reason"]


#: endpoint -> a signed body it cannot read (twilio: a form without MessageStatus, rbm: data that is not JSON)
UNREADABLE: dict[str, Any] = {"twilio": [("MessageSid", "SM1")], "vonage": [("messageId", "x")],
                              "infobip": b"{", "whatsapp": b"[1,", "rbm": b"\xff\xfe", "jasmin": b"%zz",
                              "canonical": b'{"type":"message.nope"}'}


@pytest.mark.parametrize(("via", "path", "sign", "payloads"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
class TestUnreadableIsKept:
    """The rejecting path the property test relies on is reached for every endpoint."""

    async def test_fixed_unreadable_body(self, http: aiohttp.ClientSession, server: LiveServer,
                                         rejected: RejectedTail, via: str, path: str,
                                         sign: Callable[[LiveServer, Any], Request],
                                         payloads: st.SearchStrategy[Any]) -> None:
        """A signed body the endpoint cannot read is a 400 with its body kept in ingest-rejected."""
        request = sign(server, UNREADABLE[via])
        assert await _send(http, server, path, request) == 400
        kept = await rejected.wait_for(via, request[1])
        assert kept[0]["via"] == via
