"""Credentials and ids in headers that are not UTF-8 (or not text at all) are refused as credentials: 401 with
the JSON error body, never a 500 with a traceback in the log.

The requests go over a raw connection, since HTTP clients refuse to send such bytes.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import pytest

from support.live import Account, LiveServer

BAD = b"\xff\xfe\x80 \xc3("  # invalid UTF-8, a lone continuation byte and a truncated sequence


async def raw_request(server: LiveServer, method: str, path: bytes, headers: list[bytes],
                      body: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send one request with these exact header bytes; its status and JSON body (``{"list": [...]}`` for a list)."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: x", b"Connection: close",
                b"Content-Length: " + str(len(body)).encode(), *headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    head, _, payload = rest.partition(b"\r\n\r\n")
    parsed = orjson.loads(payload)
    body = parsed if isinstance(parsed, dict) else {"list": parsed}
    body["_head"] = head
    return int(status_line.split()[1]), body


@pytest.mark.parametrize("header", [b"X-API-Key: " + BAD, b"Authorization: Basic " + BAD,
                                    b"X-API-Key: qk_" + BAD])
async def test_api_key_bytes(server: LiveServer, header: bytes) -> None:
    status, body = await raw_request(server, "GET", b"/partner-gateway/v1/authentication", [header])
    assert (status, body["status"]) == (401, 401), body


async def test_api_key_bytes_beside_a_good_key(server: LiveServer, account: Account) -> None:
    """The valid key still works on the same server (the refusal is about the bytes, not a broken route)."""
    status, body = await raw_request(server, "GET", b"/partner-gateway/v1/authentication",
                                     [b"X-API-Key: " + account.key.encode()])
    assert status == 200, body


async def test_canonical_ingest_webhook_id_bytes(server: LiveServer) -> None:
    headers = [b"Content-Type: application/json", b"webhook-id: msg_" + BAD,
               b"webhook-timestamp: " + str(int(time.time())).encode(), b"webhook-signature: v1," + BAD]
    status, body = await raw_request(server, "POST", b"/ingest/v1/events", headers, b"{}")
    assert status == 401, body


@pytest.mark.parametrize(("provider", "header"), [
    (b"twilio", b"X-Twilio-Signature: " + BAD),
    (b"whatsapp", b"X-Hub-Signature-256: sha256=" + BAD),
    (b"rbm", b"X-Goog-Signature: " + BAD),
    (b"infobip", b"Authorization: Basic " + BAD),
])
async def test_provider_signature_bytes(server: LiveServer, provider: bytes, header: bytes) -> None:
    content_type = b"application/x-www-form-urlencoded" if provider == b"twilio" else b"application/json"
    body = {b"twilio": b"MessageSid=SM1&MessageStatus=delivered",
            b"rbm": b'{"message": {"data": "e30=", "messageId": "1"}}'}.get(provider, b"{}")
    status, payload = await raw_request(server, "POST", b"/ingest/v1/providers/" + provider,
                                        [b"Content-Type: " + content_type, header], body)
    assert status == 401, payload


@pytest.mark.parametrize("provider", [b"jasmin", b"infobip"])
async def test_provider_token_bytes(server: LiveServer, provider: bytes) -> None:
    """A ``?token=`` that percent-decodes to invalid UTF-8."""
    status, payload = await raw_request(server, "POST", b"/ingest/v1/providers/" + provider + b"?token=%ff%fe",
                                        [b"Content-Type: application/x-www-form-urlencoded"], b"id=1")
    assert status == 401, payload


async def test_request_id_bytes(server: LiveServer, account: Account) -> None:
    """An ``X-Request-Id`` that is not ASCII is replaced by a fresh id, not echoed or logged as sent."""
    status, body = await raw_request(server, "GET", b"/partner-gateway/v1/authentication",
                                     [b"X-API-Key: " + account.key.encode(), b"X-Request-Id: " + BAD])
    assert status == 200, body
    echoed = [line for line in body["_head"].split(b"\r\n") if line.lower().startswith(b"x-request-id:")]
    assert len(echoed) == 1 and re.fullmatch(rb"X-Request-Id: [0-9a-f]{32}", echoed[0]), echoed
