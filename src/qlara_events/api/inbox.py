"""Inbox conversations (Qlara §8): threads with end users, replies, read/archive state and assignees."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Final

import asyncpg
from aiohttp import web

from qlara_events.api import params
from qlara_events.api.auth import PREFIX, get_pool, key_channels, principal, require_channel
from qlara_events.api.shared import PUBLISHER
from qlara_events.config import Settings
from qlara_events.domain.status import Channel
from qlara_events.errors import BadRequest, NotFound, Unavailable
from qlara_events.http import json_object, json_response, path_int
from qlara_events.logs import get_logger
from qlara_events.projector import outbox
from qlara_events.store import inbox as store

log = get_logger("inbox")

BASE: Final = f"{PREFIX}/inbox/conversations"
SETTINGS: Final = web.AppKey("inbox_settings", Settings)
#: WhatsApp only allows free-form messages within 24 h of the user's last message.
WHATSAPP_WINDOW: Final = dt.timedelta(hours=24)
MAX_TEXT: Final = 4096


def _ts(v: dt.datetime | None) -> str | None:
    return None if v is None else v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def conversation_json(r: asyncpg.Record) -> dict[str, Any]:
    """A conversation resource."""
    window_open = None
    if r["channel"] == Channel.WHATSAPP.value:
        window_open = r["last_inbound_at"] is not None and \
            dt.datetime.now(dt.UTC) - r["last_inbound_at"] < WHATSAPP_WINDOW
    return {
        "chatId": r["chat_id"],
        "channel": r["channel"],
        "contact": r["contact"],
        "ourAddress": r["our_address"],
        "unreadCount": r["unread"],
        "lastMessagePreview": r["last_message_preview"],
        "lastMessageDate": _ts(r["last_message_at"]),
        "lastInboundDate": _ts(r["last_inbound_at"]),
        "replyWindowOpen": window_open,
        "archived": r["archived"],
        "assignee": {"userId": r["assignee_id"], "name": r["assignee_name"]} if r["assignee_id"] else None,
        "createdAt": _ts(r["created_at"]),
        "updatedAt": _ts(r["updated_at"]),
    }


def _chat_id(request: web.Request) -> int:
    return path_int(request, "chatId", "conversation")


async def _conversation(request: web.Request, chat_id: int | None = None) -> asyncpg.Record:
    found = await store.get_conversation(get_pool(request.app), principal(request).account_id,
                                         _chat_id(request) if chat_id is None else chat_id)
    if found is None:
        raise NotFound("no such conversation in this account")
    require_channel(request, found["channel"])
    return found


#: channelIds: comma-separated channel names, exactly (the document's pattern).
CHANNEL_IDS: Final = re.compile("(?:{0})(?:,(?:{0}))*".format("|".join(c.value for c in Channel)))
CHANNEL_IDS_PATTERN: Final = f"^{CHANNEL_IDS.pattern}$"
#: orderBy: an optional sign and a field. A "+" sent unencoded in a query string arrives as a space.
ORDER_BY: Final = re.compile("([+ -]?)({})".format("|".join(store.ORDERABLE)))
ORDER_BY_PATTERN: Final = f"^{ORDER_BY.pattern}$"
MAX_PAGE: Final = 1_000_000
MAX_ID: Final = 2**63 - 1
#: Message ids in the idFrom/idTo window.
MAX_MESSAGE_ID: Final = 2**62


def _optional_int(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    return params.query_int(request.query, name, -1, lo, hi) if name in request.query else None


async def list_conversations(request: web.Request) -> web.Response:
    """GET /inbox/conversations?dateFrom=&channelIds=&unreadOnly=&orderBy=&archived=&page=&limit="""
    q = request.query
    date_from = None
    if "dateFrom" in q:
        date_from = params.date_or_date_time(q["dateFrom"], "dateFrom")
    channels = None
    if "channelIds" in q:
        if not CHANNEL_IDS.fullmatch(q["channelIds"]):
            raise BadRequest("channelIds must be a comma-separated list of SMS, RCS, WHATSAPP")
        channels = sorted(set(q["channelIds"].split(",")))
    allowed = key_channels(request)
    if allowed is not None:
        # A restricted key sees only its channels' conversations (asking for others selects nothing).
        channels = [c for c in (channels or allowed) if c in allowed]
    order = ORDER_BY.fullmatch(q.get("orderBy", "-lastMessageDate"))
    if order is None:
        raise BadRequest("orderBy must be +/- one of " + ", ".join(store.ORDERABLE))
    # No sign means descending, as before signs were documented; "+" (or its form-decoded space) ascends.
    descending, field = order.group(1) not in ("+", " "), order.group(2)
    archived_raw = q.get("archived", "false")
    if archived_raw not in ("true", "false", "all"):
        raise BadRequest("archived must be true, false or all")
    archived = None if archived_raw == "all" else archived_raw == "true"
    limit = params.query_int(q, "limit", 20, 1, 1000)
    page = params.query_int(q, "page", 0, 0, MAX_PAGE)
    rows = await store.list_conversations(
        get_pool(request.app), principal(request).account_id, date_from=date_from, channels=channels,
        unread_only=bool(params.query_bool(q, "unreadOnly")), archived=archived,
        order_column=store.ORDERABLE[field], descending=descending, limit=limit, offset=params.offset(page, limit))
    return json_response([conversation_json(r) for r in rows])


async def get_conversation(request: web.Request) -> web.Response:
    """GET /inbox/conversations/{chatId}"""
    return json_response(conversation_json(await _conversation(request)))


async def conversation_messages(request: web.Request) -> web.Response:
    """GET /inbox/conversations/{chatId}/messages?idFrom=&idTo= (chronological)."""
    conv = await _conversation(request)
    rows = await store.messages(get_pool(request.app), conv["chat_id"],
                                _optional_int(request, "idFrom", 0, MAX_MESSAGE_ID),
                                _optional_int(request, "idTo", 0, MAX_MESSAGE_ID),
                                params.query_int(request.query, "limit", 100, 1, 1000))
    return json_response([{
        "id": r["id"], "direction": r["direction"], "messageId": r["message_id"] or r["event_id"],
        "text": r["text"], "messageType": r["message_type"], "media": r["media"], "timestamp": _ts(r["occurred_at"]),
    } for r in rows])


async def _json_object(request: web.Request) -> dict[str, Any]:
    return await json_object(request)


async def reply(request: web.Request) -> web.Response:
    """POST /inbox/conversations/reply {chatId, text} → 202; the send request goes to the upstream senders."""
    body = await _json_object(request)
    chat_id = params.json_int(body.get("chatId"), 1, MAX_ID)
    if chat_id is None:
        raise BadRequest("chatId is required: the conversation's numeric id")
    # A field that is present must be valid (null included), even when the other one carries the reply.
    text = body.get("text")
    if "text" in body and (not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT or "\x00" in text):
        raise BadRequest(f"text must be 1 to {MAX_TEXT} characters, not only white space")
    template = body.get("template")
    if "template" in body and not isinstance(template, dict):
        raise BadRequest("template must be an object (name, language, parameters)")
    if text is None and template is None:
        raise BadRequest(f"text is required: 1 to {MAX_TEXT} characters (or a WhatsApp template)")
    conv = await _conversation(request, chat_id)
    now = dt.datetime.now(dt.UTC)
    if conv["channel"] == Channel.WHATSAPP.value and template is None and (
            conv["last_inbound_at"] is None or now - conv["last_inbound_at"] >= WHATSAPP_WINDOW):
        raise BadRequest("outside WhatsApp's 24-hour customer-service window: the contact's last message is older "
                         "than 24 h, so only a template message can be sent (pass 'template')")
    message_id = str(uuid.uuid4())
    # PostgreSQL text cannot hold NUL, which a template's free-form name might carry.
    content = text if isinstance(text, str) else f"[template {template.get('name') if template else ''}]".replace(
        "\x00", "")
    account = principal(request).account_id
    send_request = {
        "type": "send.request", "id": message_id, "messageId": message_id, "customerMessageId": f"inbox-{message_id}",
        "accountId": account, "channel": conv["channel"], "destination": conv["contact"],
        "sender": conv["our_address"], "text": text if isinstance(text, str) else None, "template": template,
        "origin": "inbox", "chatId": conv["chat_id"], "requestedAt": _ts(now),
    }
    pool = get_pool(request.app)
    topic = request.app[SETTINGS].topics.send_requests
    payload = {k: v for k, v in send_request.items() if v is not None}
    # Recorded with its send request in the outbox, in one short transaction: no transaction (nor pool
    # connection) waits for Kafka, which may take up to QLARA_INGEST_PRODUCE_TIMEOUT to answer.
    async with pool.acquire() as conn, conn.transaction():
        thread_id = await store.record_reply(conn, conv["chat_id"], message_id, content,
                                             "TEMPLATE" if template else "TEXT", now)
        await outbox.enqueue(conn, topic, message_id, payload)
    try:
        await request.app[PUBLISHER].produce_json(topic, message_id, payload)
    except Unavailable as exc:
        # Accepted all the same: the projectors' outbox relay produces it (send requests carry a stable id).
        log.warning("reply_relay_deferred", message_id=message_id, error=exc.message)
    else:
        await outbox.forget(pool, [message_id])
    return json_response({"chatId": conv["chat_id"], "id": thread_id, "messageId": message_id,
                          "customerMessageId": send_request["customerMessageId"], "status": "ACCEPTED"}, status=202)


def _flag(sql_set: str, doc: str) -> Any:
    async def view(request: web.Request) -> web.Response:
        await _conversation(request)
        await store.set_flag(get_pool(request.app), principal(request).account_id, _chat_id(request), sql_set)
        return web.Response(status=204)

    view.__doc__ = doc
    return view


async def assign(request: web.Request) -> web.Response:
    """POST /inbox/conversations/{chatId}/assignee {userId} → 204; replaces any current assignee."""
    body = await _json_object(request)
    user_id = params.json_int(body.get("userId"), 1, MAX_ID)
    if user_id is None:
        raise BadRequest(f"userId is required: a numeric user id between 1 and {MAX_ID}")
    await _conversation(request)
    if not await store.assign(get_pool(request.app), principal(request).account_id, _chat_id(request), user_id):
        raise NotFound("no such user in this account")
    return web.Response(status=204)


async def assignable_users(request: web.Request) -> web.Response:
    """GET /inbox/conversations/assignable-users"""
    rows = await store.users(get_pool(request.app), principal(request).account_id)
    return json_response([{"userId": r["user_id"], "name": r["name"], "email": r["email"],
                           "avatarUrl": r["avatar_url"]} for r in rows])


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the inbox routes (replies use the shared publisher set up by api/app.py)."""
    app[SETTINGS] = settings
    app.router.add_get(BASE, list_conversations)
    app.router.add_get(f"{BASE}/assignable-users", assignable_users)
    app.router.add_post(f"{BASE}/reply", reply)
    app.router.add_get(f"{BASE}/{{chatId}}", get_conversation)
    app.router.add_get(f"{BASE}/{{chatId}}/messages", conversation_messages)
    app.router.add_patch(f"{BASE}/{{chatId}}/read", _flag(store.MARK_READ, "PATCH .../read → 204"))
    app.router.add_patch(f"{BASE}/{{chatId}}/archive", _flag(store.ARCHIVE, "PATCH .../archive → 204"))
    app.router.add_patch(f"{BASE}/{{chatId}}/unarchive", _flag(store.UNARCHIVE, "PATCH .../unarchive → 204"))
    app.router.add_post(f"{BASE}/{{chatId}}/assignee", assign)
    app.router.add_delete(f"{BASE}/{{chatId}}/assignee", _flag(store.UNASSIGN, "DELETE .../assignee → 204"))
