"""Delivery status (Qlara §3) and the per-message timeline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from qlara_events.api.auth import PREFIX, get_pool, principal, require_channel
from qlara_events.domain.events import MAX_ID_LENGTH
from qlara_events.domain.status import Channel
from qlara_events.errors import BadRequest, NotFound
from qlara_events.http import json_response
from qlara_events.store import messages

MAX_BATCH_IDS: Final = 500
#: The longest request line a valid batch can need: 500 ids of 200 characters, each percent-encoded from up to
#: 4 bytes of UTF-8 (12 characters), with their commas, plus the path and the channel. aiohttp's default
#: (8,190 bytes) refused a batch of 500 UUIDs with a plain-text 400 before any handler ran; the server passes
#: this instead (server.MAX_LINE_SIZE).
MAX_REQUEST_LINE: Final = MAX_BATCH_IDS * (MAX_ID_LENGTH * 12 + 3) + 8192


def _path_id(request: web.Request, name: str) -> str:
    """A path id; one with a NUL is unknown (Postgres text cannot hold NUL, so no id has one)."""
    value = request.match_info[name]
    if "\x00" in value:
        raise NotFound(f"no message with this {name}")
    return value


def _channel(request: web.Request) -> str:
    raw = request.query.get("channel")
    if not raw:
        raise BadRequest("query parameter 'channel' is required: SMS, RCS or WHATSAPP")
    try:
        channel = Channel(raw.upper()).value
    except ValueError:
        raise BadRequest("query parameter 'channel' must be SMS, RCS or WHATSAPP") from None
    require_channel(request, channel)
    return channel


async def status_one(request: web.Request) -> web.Response:
    """GET /messages/status/{customerMessageId}?channel="""
    channel = _channel(request)
    found = await messages.by_customer_id(
        get_pool(request.app), principal(request).account_id, channel, _path_id(request, "customerMessageId")
    )
    if found is None:
        raise NotFound("no message with this customerMessageId on this channel")
    return json_response(found)


async def status_batch(request: web.Request) -> web.Response:
    """GET /messages/status?ids=a,b,c&channel= (unknown ids omitted)."""
    channel = _channel(request)
    raw = request.query.get("ids", "")
    ids = [i for i in (s.strip() for s in raw.split(",")) if i]
    if not ids:
        raise BadRequest("query parameter 'ids' is required: comma-separated customerMessageIds")
    if len(ids) > MAX_BATCH_IDS:
        raise BadRequest(f"at most {MAX_BATCH_IDS} ids per request; got {len(ids)}")
    # An id with a NUL is unknown (Postgres text cannot hold NUL), and unknown ids are omitted.
    known = sorted({i for i in ids if "\x00" not in i})
    found = await messages.by_customer_ids(get_pool(request.app), principal(request).account_id, channel, known)
    return json_response(found)


def _by_message_id(channel: Channel) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def view(request: web.Request) -> web.Response:
        require_channel(request, channel.value)
        found = await messages.by_message_id(
            get_pool(request.app), principal(request).account_id, _path_id(request, "messageId"), channel.value
        )
        if found is None:
            raise NotFound(f"no {channel.value} message with this messageId")
        return json_response(found)

    view.__doc__ = f"GET /{channel.value.lower()}/messages/{{messageId}}/status"
    return view


async def message_events(request: web.Request) -> web.Response:
    """GET /messages/{messageId}/events: every event of the message, in time order."""
    account = principal(request).account_id
    message_id = _path_id(request, "messageId")
    found = await messages.by_message_id(get_pool(request.app), account, message_id)
    if found is None:
        raise NotFound("no message with this messageId")
    require_channel(request, found["channel"])
    return json_response({
        "messageId": message_id,
        "customerMessageId": found["customerMessageId"],
        "channel": found["channel"],
        "deliveryStatus": found["deliveryStatus"],
        "events": await messages.timeline(get_pool(request.app), message_id),
    })


def add_routes(app: web.Application) -> None:
    """Register the status routes."""
    app.router.add_get(f"{PREFIX}/messages/status", status_batch)
    app.router.add_get(f"{PREFIX}/messages/status/{{customerMessageId}}", status_one)
    app.router.add_get(f"{PREFIX}/rcs/messages/{{messageId}}/status", _by_message_id(Channel.RCS))
    app.router.add_get(f"{PREFIX}/whatsapp/messages/{{messageId}}/status", _by_message_id(Channel.WHATSAPP))
    app.router.add_get(f"{PREFIX}/messages/{{messageId}}/events", message_events)
