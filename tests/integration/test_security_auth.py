"""Issue #11's attacks on keys, credit, rate limits and webhooks, made against the real service (items 1, 2, 5, 11).

Each test performs the attack as a hostile tenant would and asserts it fails; each one failed before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest

from qlara_events.domain.campaigns import format_schedule
from qlara_events.store import ratelimit

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


async def restricted_key(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                         *channels: str) -> dict[str, str]:
    status_, body = await call(http, server.url, "POST", KEYS, account.headers, {"operations": list(channels)})
    assert status_ == 201, body
    return {"X-API-Key": body["apiKey"]}


class TestRestrictedKeys:
    """Item 1: a key restricted to some channels stays within them, for keys, webhooks, inbox lists and exports."""

    async def test_cannot_mint_a_wider_key(self, http, server: LiveServer, account: Account) -> None:
        """An SMS-only key cannot create a WhatsApp or an unrestricted key; what it creates is SMS-only."""
        sms = await restricted_key(http, server, account, "SMS")
        for ops in (["WHATSAPP"], ["SMS", "RCS"]):
            code, body = await call(http, server.url, "POST", KEYS, sms, {"operations": ops})
            assert code == 403 and body["error"] == "Forbidden", (ops, body)
        code, inherited = await call(http, server.url, "POST", KEYS, sms, {"name": "no operations given"})
        assert code == 201 and inherited["operations"] == ["SMS"]
        code, _ = await call(http, server.url, "GET", f"{P}/messages/status/x", {"X-API-Key": inherited["apiKey"]},
                             params={"channel": "WHATSAPP"})
        assert code == 403

    async def test_campaign_lists_show_only_its_channels(self, http, server: LiveServer, account: Account) -> None:
        """An SMS-only key lists the SMS campaigns only (the ones it may open), and another channel's stats
        are 403 to it."""
        made = {}
        for mode in ("SMS", "WHATSAPP", "RCS_SMS"):
            code, camp = await call(http, server.url, "POST", C, account.headers,
                                    {"name": f"list-{mode}", "sendingMode": mode, "destinationType": 2,
                                     "destinations": ["+393471234567"]})
            assert code == 201, camp
            made[mode] = camp["id"]
        sms = await restricted_key(http, server, account, "SMS")
        code, listed = await call(http, server.url, "GET", C, sms, params={"limit": "100"})
        assert code == 200 and {c["id"] for c in listed} == {made["SMS"]}, listed
        code, everything = await call(http, server.url, "GET", C, account.headers, params={"limit": "100"})
        assert code == 200 and set(made.values()) <= {c["id"] for c in everything}
        days = {"startDate": "2026-01-01", "endDate": "2026-01-02"}
        assert (await call(http, server.url, "GET", f"{C}/stats", sms, params={**days, "sendingMode": "WHATSAPP"})
                )[0] == 403
        assert (await call(http, server.url, "GET", f"{C}/stats", sms, params=days))[0] == 200

    async def test_cannot_revoke_or_list_keys(self, http, server: LiveServer, account: Account) -> None:
        """An SMS-only key can neither revoke the account's main key nor list or look up keys."""
        main_id = (await call(http, server.url, "GET", KEYS, account.headers))[1][0]["id"]
        sms = await restricted_key(http, server, account, "SMS")
        assert (await call(http, server.url, "DELETE", f"{KEYS}/{main_id}", sms))[0] == 403
        assert (await call(http, server.url, "GET", KEYS, sms))[0] == 403
        assert (await call(http, server.url, "GET", f"{KEYS}/{account.key}", sms))[0] == 403
        assert (await call(http, server.url, "GET", KEYS, account.headers))[0] == 200  # still valid

    async def test_cannot_read_the_webhook_secret(self, http, server: LiveServer, account: Account) -> None:
        """The webhook (every channel's statuses, and the secret that signs them) is out of a restricted key's
        reach: reading, rotating, replacing and deleting it are 403 and no secret is returned."""
        code, hook = await call(http, server.url, "POST", HOOK, account.headers,
                                {"callbackUrl": f"http://127.0.0.1:{free_port()}/hook"})
        assert code == 201, hook
        sms = await restricted_key(http, server, account, "SMS")
        for method, path, body in (("GET", HOOK, None), ("POST", f"{HOOK}/rotate-secret", None),
                                   ("PUT", HOOK, {"callbackUrl": "http://127.0.0.1:9999/x"}),
                                   ("DELETE", HOOK, None), ("GET", f"{HOOK}/deliveries", None)):
            code, answer = await call(http, server.url, method, path, sms, body)
            assert code == 403 and hook["signingSecret"] not in str(answer), (method, path)
        assert (await call(http, server.url, "GET", HOOK, account.headers))[1]["signingSecret"] == \
            hook["signingSecret"]

    async def test_inbox_list_shows_only_its_channels(self, http, server: LiveServer, db: asyncpg.Pool,
                                                      account: Account) -> None:
        """An SMS-only key lists the SMS conversation only, also when asking for WhatsApp ones."""
        await db.execute("insert into conversations (account_id, channel, contact, last_message_at) values"
                         " ($1, 'SMS', '+393330000001', now()), ($1, 'WHATSAPP', '+393330000002', now())", account.id)
        sms = await restricted_key(http, server, account, "SMS")
        code, listed = await call(http, server.url, "GET", f"{P}/inbox/conversations", sms)
        assert code == 200 and [c["channel"] for c in listed] == ["SMS"]
        code, asked = await call(http, server.url, "GET", f"{P}/inbox/conversations", sms,
                                 params={"channelIds": "WHATSAPP,SMS"})
        assert code == 200 and [c["channel"] for c in asked] == ["SMS"]
        assert (await call(http, server.url, "GET", f"{P}/inbox/conversations", sms,
                           params={"channelIds": "WHATSAPP"}))[1] == []
        code, everything = await call(http, server.url, "GET", f"{P}/inbox/conversations", account.headers)
        assert sorted(c["channel"] for c in everything) == ["SMS", "WHATSAPP"]

    async def test_exports_hold_only_its_channels(self, http, server: LiveServer, db: asyncpg.Pool,
                                                  account: Account) -> None:
        """An SMS-only key's history export has no WhatsApp row, and the main key's export (every channel) is
        neither listed to it nor downloadable by it."""
        t0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
        for channel in ("SMS", "WHATSAPP"):
            await db.execute(
                "insert into messages (message_id, account_id, channel, customer_message_id, provider,"
                " provider_message_id, destination, status, status_rank, submitted_at)"
                " values ($2, $1, $3, $2, 'twilio', $2, '+393330000009', 'SENT', 3, $4)",
                account.id, uid(f"{channel}-"), channel, t0)
        sms = await restricted_key(http, server, account, "SMS")
        window = {"startDateTime": "2026-03-01T00:00:00Z", "endDateTime": "2026-03-02T00:00:00Z"}
        code, full = await call(http, server.url, "POST", f"{P}/messages/history/export", account.headers, window)
        assert code == 202
        code, own = await call(http, server.url, "POST", f"{P}/messages/history/export", sms, window)
        assert code == 202

        async def completed(headers: dict[str, str], job: int) -> dict[str, Any] | None:
            code, link = await call(http, server.url, "GET", f"{P}/exports/{job}", headers)
            return link if code == 200 else None

        link = await wait_until(lambda: completed(sms, own["id"]), what="the SMS key's export")
        async with http.get(link["url"].replace(server.settings.base_url, server.url)) as r:
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert [row["channel"] for row in rows] == ["SMS"]
        await wait_until(lambda: completed(account.headers, full["id"]), what="the main key's export")
        assert (await call(http, server.url, "GET", f"{P}/exports/{full['id']}", sms))[0] == 404
        assert (await call(http, server.url, "POST", f"{P}/exports/{full['id']}", sms))[0] == 404
        listed = {j["id"] for j in (await call(http, server.url, "GET", f"{P}/exports", sms))[1]}
        assert own["id"] in listed and full["id"] not in listed


class TestKeyCapAndLimits:
    """Item 5: keys per account are capped, the window slides, and failed lookups per address are throttled."""

    async def test_keys_per_account_capped(self, http, server: LiveServer, account: Account) -> None:
        """With the default cap of 10 active keys, the 11th is a 409 until one is revoked."""
        cap = server.settings.api_keys_per_account
        made = []
        for _ in range(cap - 1):  # the account starts with one key
            code, key = await call(http, server.url, "POST", KEYS, account.headers, {})
            assert code == 201, key
            made.append(key["id"])
        code, refused = await call(http, server.url, "POST", KEYS, account.headers, {})
        assert code == 409 and refused["error"] == "Conflict", refused
        assert (await call(http, server.url, "DELETE", f"{KEYS}/{made[0]}", account.headers))[0] == 204
        assert (await call(http, server.url, "POST", KEYS, account.headers, {}))[0] == 201

    async def test_no_double_burst_at_a_window_boundary(self, db: asyncpg.Pool) -> None:
        """A key fires its burst of 10 just before a second boundary and again just after it: the second burst
        meets the first one's weight, so far fewer than 20 pass within that second (fixed windows let all 20
        through). Same for the minute. The clock is given to the limiter (the function every api process
        calls, on the real database), so the boundary is exact and the test cannot be late for it."""
        run = time.time_ns()

        async def burst_at(key: str, at: float, n: int, per_minute: int = 1000, burst: int = 10) -> int:
            verdicts = [await ratelimit.hit(db, f"boundary-{run}-{key}", at + i * 1e-4, per_minute=per_minute,
                                            burst=burst) for i in range(n)]
            return sum(v.allowed for v in verdicts)

        # One-second windows, burst 10: the end of second 1,000,000, then 0.05 s and 0.6 s into the next.
        assert await burst_at("a", 1_000_000.95, 10) == 10
        assert await burst_at("a", 1_000_001.05, 10) == 0  # the previous second still weighs 9.5
        assert await burst_at("b", 1_000_000.95, 10) == 10
        assert await burst_at("b", 1_000_001.60, 10) == 6  # it weighs 4: room for 6
        # Minute windows (999,960 to 1,000,020, then the next), 100 a minute: the last second of one, then 1 s
        # and 30 s into the next.
        assert await burst_at("c", 1_000_019.0, 100, per_minute=100, burst=1000) == 100
        assert await burst_at("c", 1_000_021.0, 100, per_minute=100, burst=1000) == 1  # 59/60 of 100 still weigh
        assert await burst_at("d", 1_000_019.0, 100, per_minute=100, burst=1000) == 100
        assert await burst_at("d", 1_000_050.0, 100, per_minute=100, burst=1000) == 50  # half of it weighs

    async def test_failed_lookups_throttled_per_address(self, http, infra: tuple[str, str],
                                                        db: asyncpg.Pool) -> None:
        """After 5 invalid keys in a minute (this server's setting) an address gets 429 with Retry-After before
        any lookup; a key that authenticated before still works from that address."""
        settings = make_settings(*infra, QLARA_AUTH_FAILURES_PER_MINUTE="5")
        account = await new_account(db)
        async with serve(settings, ["api"]) as own:
            assert (await call(http, own.url, "GET", KEYS, account.headers))[0] == 200
            codes = []
            for i in range(8):
                async with http.get(f"{own.url}{KEYS}", headers={"X-API-Key": f"qk_guess{i}"}) as r:
                    codes.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1 and (await r.json())["retryAfter"] >= 1
            assert codes == [401] * 5 + [429] * 3, codes
            assert (await call(http, own.url, "GET", KEYS, account.headers))[0] == 200


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
