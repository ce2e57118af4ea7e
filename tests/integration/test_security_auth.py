"""Issue #11's attacks on keys, credit, rate limits and webhooks, made against the real service (items 1, 2, 5, 11).

Each test performs the attack as a hostile tenant would and asserts it fails; each one failed before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from qlara_events.domain.campaigns import format_schedule

from support.isolated import free_port
from support.live import Account, LiveServer, post_events, serve, status, submitted, uid, wait_until
from support.settings import make_settings, new_account

P = "/partner-gateway/v1"
KEYS = f"{P}/authentication"
HOOK = f"{P}/webhooks/delivery-status"
C = f"{P}/campaigns"


async def call(http: aiohttp.ClientSession, base: str, method: str, path: str, headers: dict[str, str],
               body: Any = None, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, f"{base}{path}", json=body, headers=headers, **kw) as r:
        return r.status, (await r.json() if r.status != 204 else None)


async def one_contact_list(http: aiohttp.ClientSession, server: LiveServer, account: Account) -> int:
    code, contact = await call(http, server.url, "POST", f"{P}/contacts", account.headers,
                               {"phoneNumber": "+393471000000", "firstName": "Only"})
    assert code == 201, contact
    code, lst = await call(http, server.url, "POST", f"{P}/contacts/list", account.headers, {"name": "one"})
    assert code == 201, lst
    code, _ = await call(http, server.url, "POST", f"{P}/contacts/list/contacts", account.headers,
                         {"listIds": [lst["id"]], "contactIds": [contact["id"]]})
    assert code == 201
    return int(lst["id"])


async def import_into(http: aiohttp.ClientSession, server: LiveServer, account: Account, list_id: int,
                      n: int) -> None:
    """Import ``n`` new contacts into the list through the upload API, as the attacker would."""
    data = "phone,firstName\n" + "".join(f"+39347{2000000 + i:07d},Late{i}\n" for i in range(n))
    form = aiohttp.FormData()
    form.add_field("fileName", "late.csv")
    form.add_field("listId", str(list_id))
    form.add_field("file", data.encode(), filename="late.csv", content_type="text/csv")
    async with http.post(f"{server.url}{P}/contacts/upload", data=form, headers=account.headers) as r:
        report = await r.json()
        assert r.status in (200, 201) and report["summary"]["created"] == n, report


class TestCampaignCredit:
    """Item 2: a confirmed campaign never costs more than the credit its confirmation reserved."""

    LATE = 300

    async def campaign(self, http: aiohttp.ClientSession, server: LiveServer, account: Account, list_id: int,
                       **over: Any) -> dict[str, Any]:
        body = {"name": "overspend", "sendingMode": "SMS", "smsSender": "QLARA", "smsBody": "Hi",
                "destinationType": 1, "contactListIds": [list_id], "readyToSend": True, **over}
        code, camp = await call(http, server.url, "POST", C, account.headers, body)
        assert code == 201, camp
        code, goal = await call(http, server.url, "POST", f"{C}/{camp['id']}/calculateGoal", account.headers)
        assert code == 200 and goal["totalDestinations"] == 1, goal
        return dict(goal)

    async def test_contacts_imported_before_confirm(self, http, server: LiveServer, db: asyncpg.Pool,
                                                    account: Account) -> None:
        """Priced for one contact, then 300 imported: confirm refuses (400) and reserves nothing."""
        list_id = await one_contact_list(http, server, account)
        goal = await self.campaign(http, server, account, list_id)
        await db.execute("update accounts set credit = $2 where account_id = $1", account.id,
                         Decimal(str(goal["price"])))
        await import_into(http, server, account, list_id, self.LATE)
        code, body = await call(http, server.url, "PUT", f"{C}/{goal['id']}/confirm", account.headers)
        assert code == 400 and "calculateGoal" in body["message"], body
        assert await db.fetchval("select credit from accounts where account_id = $1", account.id) == \
            Decimal(str(goal["price"]))

    async def test_contacts_imported_after_confirm(self, http, server: LiveServer, db: asyncpg.Pool,
                                                   account: Account) -> None:
        """Confirmed for one contact with a later scheduledDate, 300 imported before it starts: one message is
        sent, and once settled the account's credit is not below 0."""
        list_id = await one_contact_list(http, server, account)
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
        goal = await self.campaign(http, server, account, list_id, scheduledDate=format_schedule(at))
        await db.execute("update accounts set credit = $2 where account_id = $1", account.id,
                         Decimal(str(goal["price"])))
        code, confirmed = await call(http, server.url, "PUT", f"{C}/{goal['id']}/confirm", account.headers)
        assert code == 202 and confirmed["status"] == 1, confirmed
        await import_into(http, server, account, list_id, self.LATE)
        assert dt.datetime.now(dt.UTC) < at, "the import ran past scheduledDate: too slow a machine"

        async def expanded() -> asyncpg.Record | None:
            row = await db.fetchrow("select expansion_done, expanded from campaigns where campaign_id = $1",
                                    goal["id"])
            return row if row["expansion_done"] else None

        assert (await wait_until(expanded, timeout=60, what="the campaign's expansion"))["expanded"] == 1
        # End it now (its one message will never reach a final status here): settlement runs at once.
        await db.execute("update campaigns set deadline_at = now() - interval '1 s' where campaign_id = $1",
                         goal["id"])

        async def ended() -> dict[str, Any] | None:
            body = (await call(http, server.url, "GET", f"{C}/{goal['id']}", account.headers))[1]
            return body if body["status"] in (3, 4) else None

        done = await wait_until(ended, timeout=30, what="the campaign's settlement")
        assert done["messagesCreated"] == 1
        assert await db.fetchval("select credit from accounts where account_id = $1", account.id) >= 0


@contextlib.asynccontextmanager
async def not_http(banner: bytes) -> AsyncIterator[int]:
    """A TCP service on loopback that is not an HTTP server (as SSH or a database would be): its port."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


class TestWebhookOracle:
    """Item 11: registering and delivering webhooks tells a partner nothing about hosts and ports it cannot see."""

    async def test_registration_does_not_echo_the_resolved_address(self, http, infra: tuple[str, str],
                                                                   db: asyncpg.Pool) -> None:
        """With no network exempted, a name that resolves to loopback is a 400 that does not name the address;
        an unresolvable name gets the same answer (no oracle for which internal names exist)."""
        settings = make_settings(*infra, QLARA_WEBHOOK_ALLOWED_NETWORKS="")
        account = await new_account(db)
        async with serve(settings, ["api"]) as own:
            answers = []
            for host in ("localhost", f"{uid('nx')}.invalid"):
                code, body = await call(http, own.url, "POST", HOOK, account.headers,
                                        {"callbackUrl": f"http://{host}/hook"})
                assert code == 400 and body["error"] == "Bad Request", body
                assert "127.0.0.1" not in body["message"] and "loopback" not in body["message"], body
                answers.append(body["message"])
            assert answers[0] == answers[1]

    @pytest.mark.parametrize("port", [22, 25, 111, 1023])
    async def test_other_ports_refused(self, http, server: LiveServer, account: Account, port: int) -> None:
        """Ports other than 443, 80 and the configured ones (1024-65535 in the test settings) are a 400."""
        code, body = await call(http, server.url, "POST", HOOK, account.headers,
                                {"callbackUrl": f"http://127.0.0.1:{port}/hook"})
        assert code == 400 and "port" in body["message"], body

    async def test_delivery_log_does_not_map_ports(self, http, server: LiveServer, db: asyncpg.Pool) -> None:
        """A webhook on a closed port and one on a port where a non-HTTP service listens log the same error."""
        errors = []
        async with not_http(b"SSH-2.0-OpenSSH_9.6\r\n") as listening:
            for port in (free_port(), listening):
                account = await new_account(db)
                code, _ = await call(http, server.url, "POST", HOOK, account.headers,
                                     {"callbackUrl": f"http://127.0.0.1:{port}/hook"})
                assert code == 201
                sub = submitted(account.id)
                resp = await post_events(http, server, [sub, status("DELIVERED", message_id=sub["messageId"])])
                assert resp.status in (200, 202)

                async def failed(a: Account = account) -> str | None:
                    _, page = await call(http, server.url, "GET", f"{HOOK}/deliveries", a.headers)
                    items = [d for d in page["items"] if d["error"]]
                    return items[0]["error"] if items else None

                errors.append(await wait_until(failed, timeout=30, what=f"a failed attempt on port {port}"))
        closed, open_ = errors
        assert closed == open_, errors
        assert not any(w in closed.lower() for w in ("refused", "errno", "status line", "ssh")), errors
