"""Inbox conversations built from real inbound messages, through the provider endpoint and the projector."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from qlara_events.config import DEV_SECRETS
from qlara_events.store import inbox as inbox_store

from support.live import Account, LiveServer, post_events, read_topic, uid, wait_until
from support.receiver import Receiver, start_receiver
from unit.providers.signing import whatsapp_signature

P = "/partner-gateway/v1"
INBOX = f"{P}/inbox/conversations"


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async for r in start_receiver():
        yield r


def whatsapp_inbound(number: str, contact: str, text: str, wamid: str) -> bytes:
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": number.lstrip("+"), "phone_number_id": "1234"},
            "contacts": [{"profile": {"name": "Mario"}, "wa_id": contact.lstrip("+")}],
            "messages": [{"from": contact.lstrip("+"), "id": wamid, "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": text}}]}}]}]})


async def post_whatsapp(http: aiohttp.ClientSession, server: LiveServer, body: bytes) -> None:
    sig = whatsapp_signature(DEV_SECRETS["QLARA_WHATSAPP_APP_SECRET"], body)
    async with http.post(f"{server.url}/ingest/v1/providers/whatsapp", data=body,
                         headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()


async def conversations(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                        **params: str) -> list[dict[str, Any]]:
    async with http.get(f"{server.url}{INBOX}", params=params, headers=account.headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def route_number(db: asyncpg.Pool, account: Account) -> str:
    number = "+1555" + str(int(uid()[:7], 16) % 10_000_000).zfill(7)
    await db.execute("insert into sender_addresses (channel, address, account_id) values ('WHATSAPP', $1, $2)",
                     number, account.id)
    return number


async def open_conversation(http: aiohttp.ClientSession, server: LiveServer, db: asyncpg.Pool,
                            account: Account, texts: tuple[str, ...] = ("Ciao",)) -> dict[str, Any]:
    number = await route_number(db, account)
    contact = "+39333" + str(int(uid()[:7], 16) % 10_000_000).zfill(7)
    for text in texts:
        await post_whatsapp(http, server, whatsapp_inbound(number, contact, text, uid("wamid.")))

    async def opened() -> dict[str, Any] | None:
        found = [c for c in await conversations(http, server, account) if c["contact"] == contact]
        return found[0] if found and found[0]["unreadCount"] == len(texts) else None

    return await wait_until(opened, what="conversation opened")


class TestInboundFlow:
    """An inbound WhatsApp message opens a conversation, reaches the webhook as INBOUND, and can be answered."""

    async def test_inbound_to_conversation_webhook_and_reply(self, http, server, db, account, receiver) -> None:
        """Provider endpoint → conversation + INBOUND webhook → reply produced to qlara.send-requests."""
        token = uid()
        async with http.post(f"{server.url}{P}/webhooks/delivery-status", headers=account.headers,
                             json={"callbackUrl": receiver.endpoint("ok", token)}) as r:
            secret = (await r.json())["signingSecret"]
        conv = await open_conversation(http, server, db, account, ("Confermo, grazie",))
        assert conv["channel"] == "WHATSAPP" and conv["lastMessagePreview"] == "Confermo, grazie"
        assert conv["replyWindowOpen"] is True
        [hook] = await receiver.wait_for(token, 1)
        payload = Webhook(secret).verify(hook.body, hook.headers)
        assert payload["eventType"] == "INBOUND" and payload["text"] == "Confermo, grazie"
        assert payload["source"] == conv["contact"]

        async with http.post(f"{server.url}{INBOX}/reply", headers=account.headers,
                             json={"chatId": conv["chatId"], "text": "Grazie a lei!"}) as r:
            assert r.status == 202, await r.text()
            accepted = await r.json()
        [request] = await read_topic(server.settings, server.settings.topics.send_requests,
                                     lambda v: v["messageId"] == accepted["messageId"])
        assert request["destination"] == conv["contact"] and request["text"] == "Grazie a lei!"
        assert request["channel"] == "WHATSAPP" and request["accountId"] == account.id
        async with http.get(f"{server.url}{INBOX}/{conv['chatId']}/messages", headers=account.headers) as r:
            thread = await r.json()
        assert [(m["direction"], m["text"]) for m in thread] == [("INBOUND", "Confermo, grazie"),
                                                                 ("OUTBOUND", "Grazie a lei!")]

    async def test_whatsapp_window_closed(self, http, server, db, account) -> None:
        """A free-form reply 24 h after the contact's last message is a clear 400; a template is accepted."""
        conv = await open_conversation(http, server, db, account)
        await db.execute("update conversations set last_inbound_at = now() - interval '25 hours' where chat_id = $1",
                         conv["chatId"])
        async with http.post(f"{server.url}{INBOX}/reply", headers=account.headers,
                             json={"chatId": conv["chatId"], "text": "Hello again"}) as r:
            assert r.status == 400
            assert "24-hour" in (await r.json())["message"]
        async with http.post(f"{server.url}{INBOX}/reply", headers=account.headers,
                             json={"chatId": conv["chatId"], "template": {"name": "follow_up", "language": "it"}}) as r:
            assert r.status == 202


class TestConversationEndpoints:
    """Listing, reading, archiving and assigning."""

    async def test_read_archive_unarchive(self, http, server, db, account) -> None:
        """read zeroes unread; archive hides from the default list; unarchive shows it again."""
        conv = await open_conversation(http, server, db, account, ("a", "b"))
        assert conv["unreadCount"] == 2
        assert [c["chatId"] for c in await conversations(http, server, account, unreadOnly="true")] == [conv["chatId"]]
        async with http.patch(f"{server.url}{INBOX}/{conv['chatId']}/read", headers=account.headers) as r:
            assert r.status == 204
        assert await conversations(http, server, account, unreadOnly="true") == []
        async with http.patch(f"{server.url}{INBOX}/{conv['chatId']}/archive", headers=account.headers) as r:
            assert r.status == 204
        assert await conversations(http, server, account) == []
        assert len(await conversations(http, server, account, archived="true")) == 1
        async with http.patch(f"{server.url}{INBOX}/{conv['chatId']}/unarchive", headers=account.headers) as r:
            assert r.status == 204
        assert len(await conversations(http, server, account)) == 1

    async def test_messages_window(self, http, server, db, account) -> None:
        """idFrom/idTo select an inclusive id window, in chronological order."""
        conv = await open_conversation(http, server, db, account, ("one", "two", "three"))
        async with http.get(f"{server.url}{INBOX}/{conv['chatId']}/messages", headers=account.headers) as r:
            ids = [m["id"] for m in await r.json()]
        assert ids == sorted(ids) and len(ids) == 3
        async with http.get(f"{server.url}{INBOX}/{conv['chatId']}/messages", headers=account.headers,
                            params={"idFrom": str(ids[1]), "idTo": str(ids[1])}) as r:
            assert [m["id"] for m in await r.json()] == [ids[1]]

    async def test_assignee(self, http, server, db, account, other_account) -> None:
        """Assign to the account's user (204), refuse another account's user (404), unassign (204)."""
        conv = await open_conversation(http, server, db, account)
        mine = await inbox_store.create_user(db, account.id, "Giulia", None)
        theirs = await inbox_store.create_user(db, other_account.id, "Eve", None)
        async with http.get(f"{server.url}{INBOX}/assignable-users", headers=account.headers) as r:
            assert [u["userId"] for u in await r.json()] == [mine]
        async with http.post(f"{server.url}{INBOX}/{conv['chatId']}/assignee", headers=account.headers,
                             json={"userId": mine}) as r:
            assert r.status == 204
        async with http.get(f"{server.url}{INBOX}/{conv['chatId']}", headers=account.headers) as r:
            assert (await r.json())["assignee"] == {"userId": mine, "name": "Giulia"}
        async with http.post(f"{server.url}{INBOX}/{conv['chatId']}/assignee", headers=account.headers,
                             json={"userId": theirs}) as r:
            assert r.status == 404
        async with http.post(f"{server.url}{INBOX}/{conv['chatId']}/assignee", headers=account.headers,
                             json={}) as r:
            assert r.status == 400
        for _ in range(2):  # idempotent
            async with http.delete(f"{server.url}{INBOX}/{conv['chatId']}/assignee", headers=account.headers) as r:
                assert r.status == 204

    async def test_other_account_and_bad_input(self, http, server, db, account, other_account) -> None:
        """Another account's conversation is 404 everywhere; invalid filters and bodies are 400."""
        conv = await open_conversation(http, server, db, account)
        chat = conv["chatId"]
        for method, path in (("GET", f"{INBOX}/{chat}"), ("GET", f"{INBOX}/{chat}/messages"),
                             ("PATCH", f"{INBOX}/{chat}/read"), ("PATCH", f"{INBOX}/{chat}/archive"),
                             ("DELETE", f"{INBOX}/{chat}/assignee")):
            async with http.request(method, f"{server.url}{path}", headers=other_account.headers) as r:
                assert r.status == 404, path
        async with http.post(f"{server.url}{INBOX}/reply", headers=other_account.headers,
                             json={"chatId": chat, "text": "hi"}) as r:
            assert r.status == 404
        for params in ({"orderBy": "-nope"}, {"channelIds": "FAX"}, {"unreadOnly": "maybe"}, {"dateFrom": "x"}):
            async with http.get(f"{server.url}{INBOX}", params=params, headers=account.headers) as r:
                assert r.status == 400, params
        for body in ({"text": "hi"}, {"chatId": chat}, {"chatId": chat, "text": ""}, [1]):
            async with http.post(f"{server.url}{INBOX}/reply", headers=account.headers, json=body) as r:
                assert r.status == 400, body

    async def test_canonical_inbound_with_account(self, http, server, account) -> None:
        """An upstream sender's message.inbound with accountId opens a conversation without routing."""
        contact = "+4479" + str(int(uid()[:7], 16) % 10_000_000).zfill(7)
        await post_events(http, server, {"type": "message.inbound", "id": uid("in-"),
                                         "occurredAt": "2026-04-02T09:05:02Z", "accountId": account.id,
                                         "channel": "SMS", "source": contact, "destination": "QLARA",
                                         "text": "STOP"})

        async def opened() -> list[dict[str, Any]]:
            return [c for c in await conversations(http, server, account) if c["contact"] == contact]

        [conv] = await wait_until(opened, what="SMS conversation")
        assert conv["channel"] == "SMS" and conv["replyWindowOpen"] is None
