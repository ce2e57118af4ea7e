"""Inbox conversations (Qlara §8): threads with end users, replies, read/archive state and assignees."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

import asyncpg
import orjson
from aiohttp import web

from qlara_events.api.auth import PREFIX, get_pool, principal, require_channel
from qlara_events.api.shared import PUBLISHER
from qlara_events.config import Settings
from qlara_events.domain.status import Channel
from qlara_events.errors import BadRequest, NotFound
from qlara_events.http import json_response, path_int
from qlara_events.store import inbox as store

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


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return v


def _bool_param(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false")


async def list_conversations(request: web.Request) -> web.Response:
    """GET /inbox/conversations?dateFrom=&channelIds=&unreadOnly=&orderBy=&archived=&page=&limit="""
    q = request.query
    date_from = None
    if q.get("dateFrom"):
        try:
            date_from = dt.datetime.fromisoformat(q["dateFrom"])
        except ValueError:
            raise BadRequest("dateFrom must be an ISO-8601 date or date-time") from None
        if date_from.tzinfo is None:
            date_from = date_from.replace(tzinfo=dt.UTC)
    channels = None
    if q.get("channelIds"):
        channels = [c.strip().upper() for c in q["channelIds"].split(",") if c.strip()]
        if any(c not in Channel.__members__ for c in channels):
            raise BadRequest("channelIds must be a comma-separated list of SMS, RCS, WHATSAPP")
    order = q.get("orderBy", "-lastMessageDate")
    descending = not order.startswith("+")
    field = order.lstrip("+- ")
    if field not in store.ORDERABLE:
        raise BadRequest("orderBy must be +/- one of " + ", ".join(store.ORDERABLE))
    archived_raw = q.get("archived", "false").lower()
    if archived_raw not in ("true", "false", "all"):
        raise BadRequest("archived must be true, false or all")
    archived = None if archived_raw == "all" else archived_raw == "true"
    limit = _int_param(request, "limit", 20, 1, 1000) or 20
    page = _int_param(request, "page", 0, 0, 1_000_000) or 0
    rows = await store.list_conversations(
        get_pool(request.app), principal(request).account_id, date_from=date_from, channels=channels,
        unread_only=bool(_bool_param(request, "unreadOnly")), archived=archived,
        order_column=store.ORDERABLE[field], descending=descending, limit=limit, offset=page * limit)
    return json_response([conversation_json(r) for r in rows])


async def get_conversation(request: web.Request) -> web.Response:
    """GET /inbox/conversations/{chatId}"""
    return json_response(conversation_json(await _conversation(request)))


async def conversation_messages(request: web.Request) -> web.Response:
    """GET /inbox/conversations/{chatId}/messages?idFrom=&idTo= (chronological)."""
    conv = await _conversation(request)
    rows = await store.messages(get_pool(request.app), conv["chat_id"],
                                _int_param(request, "idFrom", None, 0, 2**62),
                                _int_param(request, "idTo", None, 0, 2**62),
                                _int_param(request, "limit", 100, 1, 1000) or 100)
    return json_response([{
        "id": r["id"], "direction": r["direction"], "messageId": r["message_id"] or r["event_id"],
        "text": r["text"], "messageType": r["message_type"], "media": r["media"], "timestamp": _ts(r["occurred_at"]),
    } for r in rows])


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def reply(request: web.Request) -> web.Response:
    """POST /inbox/conversations/reply {chatId, text} → 202; the send request goes to the upstream senders."""
    body = await _json_object(request)
    chat_id = body.get("chatId")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int) or not 0 < chat_id < 2**63:
        raise BadRequest("chatId is required: the conversation's numeric id")
    text = body.get("text")
    template = body.get("template")
    if template is not None and not isinstance(template, dict):
        raise BadRequest("template must be an object (name, language, parameters)")
    if template is None and (not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT):
        raise BadRequest(f"text is required: 1 to {MAX_TEXT} characters")
    conv = await _conversation(request, chat_id)
    now = dt.datetime.now(dt.UTC)
    if conv["channel"] == Channel.WHATSAPP.value and template is None and (
            conv["last_inbound_at"] is None or now - conv["last_inbound_at"] >= WHATSAPP_WINDOW):
        raise BadRequest("outside WhatsApp's 24-hour customer-service window: the contact's last message is older "
                         "than 24 h, so only a template message can be sent (pass 'template')")
    message_id = str(uuid.uuid4())
    content = text if isinstance(text, str) else f"[template {template.get('name') if template else ''}]"
    account = principal(request).account_id
    send_request = {
        "type": "send.request", "id": message_id, "messageId": message_id, "customerMessageId": f"inbox-{message_id}",
        "accountId": account, "channel": conv["channel"], "destination": conv["contact"],
        "sender": conv["our_address"], "text": text if isinstance(text, str) else None, "template": template,
        "origin": "inbox", "chatId": conv["chat_id"], "requestedAt": _ts(now),
    }
    pool = get_pool(request.app)
    async with pool.acquire() as conn, conn.transaction():
        # Recorded and produced together: a Kafka failure rolls the thread entry back (503, retry).
        thread_id = await store.record_reply(conn, conv["chat_id"], message_id, content,
                                             "TEMPLATE" if template else "TEXT", now)
        await request.app[PUBLISHER].produce_json(request.app[SETTINGS].topics.send_requests, message_id,
                                                  {k: v for k, v in send_request.items() if v is not None})
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
    user_id = body.get("userId")
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise BadRequest("userId is required: a numeric user id")
    if not 0 < user_id < 2**63:
        raise NotFound("no such user in this account")
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
