"""Issue #11 item 6: spreadsheet bombs and imports that hold the API's connections, attacked on the real service.

Each test makes the attack; with the fix reverted it fails (the bomb is parsed into memory, the rows past the
cap are imported, another account's requests wait behind the imports).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from support.live import Account, LiveServer, serve, uid, wait_until
from support.settings import make_settings, new_account

P = "/partner-gateway/v1"
C = f"{P}/contacts"
MiB = 1024 * 1024
#: The small limits of the ``limited`` server, so the caps are reached with small files.
MAX_ROWS = 1000
MAX_PART = 64 * 1024
MAX_UNCOMPRESSED = 1 * MiB
MAX_XLS = 64 * 1024


async def upload(http: aiohttp.ClientSession, server: LiveServer, account: Account, data: Any, file_name: str,
                 path: str = f"{C}/upload") -> tuple[int, Any]:
    """A multipart import of ``data`` as ``file_name``; (status, JSON body)."""
    form = aiohttp.FormData()
    form.add_field("fileName", file_name)
    data = io.BytesIO(data) if isinstance(data, bytes) else data  # -- aiohttp warns on large raw bytes
    form.add_field("file", data, filename=file_name, content_type="application/octet-stream")
    async with http.post(f"{server.url}{path}", data=form, headers=account.headers) as r:
        return r.status, await r.json()


async def contacts_with(http: aiohttp.ClientSession, server: LiveServer, account: Account,
                        search: str) -> list[Any]:
    async with http.get(f"{server.url}{C}", params={"search": search}, headers=account.headers) as r:
        assert r.status == 200
        found: list[Any] = await r.json()
        return found


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


@contextlib.contextmanager
def peak_growth() -> Iterator[list[float]]:
    """Peak RSS growth (MiB) of this process, which runs the server too, over the block: ``[growth]`` after."""
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    out: list[float] = []
    yield out
    out.append((_rss_kib("VmHWM") - before) / 1024)


def workbook(rows: list[list[Any]]) -> bytes:
    """An XLSX of ``rows`` (openpyxl writes text as inline strings)."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


SHEET = (b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/'
         b'2006/main"><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c></row><row r="2"><c r="A2" t="s"><v>1</v>'
         b'</c></row></sheetData></worksheet>')
SST_TYPE = b"application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"


def with_shared_strings(chunks: Iterator[bytes]) -> bytes:
    """A workbook as Excel writes it: two cells referring to shared strings 0 and 1, the table being ``chunks``,
    compressed as it is written (never whole in memory)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(workbook([["x"]]))) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "[Content_Types].xml":
                data = data.replace(b"</Types>", b'<Override PartName="/xl/sharedStrings.xml" ContentType="'
                                    + SST_TYPE + b'" /></Types>')
            elif info.filename == "xl/worksheets/sheet1.xml":
                data = SHEET
            dst.writestr(info.filename, data)
        with dst.open("xl/sharedStrings.xml", "w") as f:
            for chunk in chunks:
                f.write(chunk)
    return out.getvalue()


SST = b'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'


def bomb_strings(mib: int) -> Iterator[bytes]:
    """A shared-strings table: "phone", then one string of ``mib`` MiB of "9" (deflates about 1000-fold)."""
    yield SST + b"<si><t>phone</t></si><si><t>"
    chunk = b"9" * MiB
    for _ in range(mib):
        yield chunk
    yield b"</t></si></sst>"


def varied_strings(count: int) -> Iterator[bytes]:
    """A shared-strings table of ``count`` distinct names (a modest, realistic compression ratio)."""
    yield SST + b"<si><t>phone</t></si><si><t>+393331000002</t></si>"
    for i in range(count):
        yield f"<si><t>Name {i * 7919 % 1000003} Surname {i}</t></si>".encode()
    yield b"</sst>"


def csv_rows(n: int, tag: str) -> bytes:
    return ("phone,firstName\n" + "".join(f"+39333{i:07d},{tag}\n" for i in range(n))).encode()


@pytest_asyncio.fixture(scope="module")
async def limited(infra: tuple[str, str], db: Any) -> AsyncIterator[LiveServer]:
    """An api with small import limits."""
    settings = make_settings(*infra, QLARA_IMPORT_MAX_ROWS=str(MAX_ROWS), QLARA_IMPORT_XLSX_MAX_PART_BYTES=str(MAX_PART),
                             QLARA_IMPORT_XLSX_MAX_UNCOMPRESSED_BYTES=str(MAX_UNCOMPRESSED),
                             QLARA_IMPORT_XLS_MAX_BYTES=str(MAX_XLS))
    async with serve(settings, ["api"]) as live:
        yield live


class TestSpreadsheetBombs:
    """What a parser would hold whole is judged before it is parsed."""

    async def test_shared_strings_zip_bomb_is_refused_before_openpyxl_reads_it(self, http, server,
                                                                              account) -> None:
        """A 300 KiB XLSX whose shared strings expand to 300 MiB is a 413 with the default limits, and the
        server's memory does not grow by anything like the table (openpyxl would hold it whole, twice)."""
        bomb = with_shared_strings(bomb_strings(300))
        assert len(bomb) < 2 * MiB
        with peak_growth() as growth:
            status, body = await upload(http, server, account, bomb, "bomb.xlsx")
        assert growth[0] < 64, f"peak RSS grew by {growth[0]:.0f} MiB: the bomb was decompressed ({status})"
        assert status == 413 and body["status"] == 413, body
        assert "xl/sharedStrings.xml" in body["message"] and "ZIP bomb" in body["message"], body

    async def test_shared_strings_past_the_part_cap_are_refused(self, http, limited, account) -> None:
        """A shared-strings table past the per-part cap is a 413 even when it compresses like real text."""
        status, rep = await upload(http, limited, account, with_shared_strings(varied_strings(10)), "few.xlsx")
        assert status == 200 and rep["summary"]["created"] == 1, rep  # the same workbook, with a small table
        book = with_shared_strings(varied_strings(20_000))
        assert len(book) < MiB
        status, body = await upload(http, limited, account, book, "names.xlsx")
        assert status == 413 and "xl/sharedStrings.xml" in body["message"], body
        assert str(MAX_PART) in body["message"], body

    async def test_workbook_past_the_uncompressed_cap_is_refused(self, http, limited, account) -> None:
        """A workbook whose entries declare more than the uncompressed cap in all is a 413."""
        book = workbook([["phone", "firstName"]] + [[f"+39334{i:07d}", i] for i in range(12_000)])
        assert sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(book)).infolist()) > MAX_UNCOMPRESSED
        status, body = await upload(http, limited, account, book, "big.xlsx")
        assert status == 413 and str(MAX_UNCOMPRESSED) in body["message"], body

    async def test_xls_past_its_size_cap_is_refused_before_xlrd(self, http, limited, account) -> None:
        """An XLS larger than its cap is a 413 (xlrd would read it whole), not parsed at all."""
        data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * (MAX_XLS + 1)
        status, body = await upload(http, limited, account, data, "legacy.xls")
        assert status == 413 and str(MAX_XLS) in body["message"], body


class TestRowCap:
    """Every format stops reading at the first row past QLARA_IMPORT_MAX_ROWS; nothing of the file is kept."""

    async def test_csv_at_the_cap_imports_and_one_row_more_is_refused(self, http, limited, account) -> None:
        """MAX_ROWS data rows import; MAX_ROWS + 1 is a 413 naming the cap, and none of its rows is kept."""
        status, rep = await upload(http, limited, account, csv_rows(MAX_ROWS, "atcap"), "ok.csv")
        assert status == 200 and rep["summary"]["total"] == MAX_ROWS, rep
        tag = uid("over")
        with peak_growth() as growth:
            status, body = await upload(http, limited, account, csv_rows(MAX_ROWS + 1, tag), "over.csv")
        assert status == 413 and body["status"] == 413 and f"{MAX_ROWS} rows" in body["message"], body
        assert await contacts_with(http, limited, account, tag) == []
        assert growth[0] < 64, f"peak RSS grew by {growth[0]:.0f} MiB"

    async def test_long_csv_stops_at_the_cap(self, http, limited, account) -> None:
        """A 200,000-row CSV against a 1,000-row cap is refused, and none of it is kept."""
        tag = uid("long")
        status, body = await upload(http, limited, account, csv_rows(200_000, tag), "long.csv")
        assert status == 413 and f"{MAX_ROWS} rows" in body["message"], body
        assert await contacts_with(http, limited, account, tag) == []

    @pytest.mark.parametrize("name", ["rows.xlsx", "rows.tsv", "rows.txt"])
    async def test_other_formats_past_the_cap_are_refused(self, http, limited, account, name: str) -> None:
        """XLSX, TSV and TXT files of MAX_ROWS + 1 data rows are 413."""
        rows = [["phone"]] + [[f"+39335{i:07d}"] for i in range(MAX_ROWS + 1)]
        data = (workbook(rows) if name.endswith(".xlsx")
                else "".join(f"{r[0]}\tx\n" for r in rows).encode())
        status, body = await upload(http, limited, account, data, name)
        assert status == 413 and f"{MAX_ROWS} rows" in body["message"], body

    async def test_xls_past_the_cap_is_refused(self, http, limited, account) -> None:
        """An XLS of MAX_ROWS + 1 data rows (within its size cap) is 413."""
        import xlwt  # type: ignore[import-untyped]  # -- test-only writer without type information

        book = xlwt.Workbook()
        sheet = book.add_sheet("s")
        sheet.write(0, 0, "phone")
        for i in range(MAX_ROWS + 1):
            sheet.write(i + 1, 0, 393360000000 + i)
        out = io.BytesIO()
        book.save(out)
        assert len(out.getvalue()) <= MAX_XLS
        status, body = await upload(http, limited, account, out.getvalue(), "rows.xls")
        assert status == 413 and f"{MAX_ROWS} rows" in body["message"], body

    async def test_vcard_past_the_cap_is_refused(self, http, limited, account) -> None:
        """A vCard file of MAX_ROWS + 1 cards is 413."""
        cards = "".join(f"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:A {i}\r\nTEL:+39337{i:07d}\r\nEND:VCARD\r\n"
                        for i in range(MAX_ROWS + 1))
        status, body = await upload(http, limited, account, cards.encode(), "all.vcf", path=f"{C}/upload/vcard")
        assert status == 413 and f"{MAX_ROWS} rows" in body["message"], body


class TestImportsCannotExhaustTheApiPool:
    """Imports run on a pool of their own: however many there are, other accounts' requests are served."""

    @staticmethod
    async def blocked_behind(db: Any, pid: int) -> int:
        """How many backends wait for a lock the backend ``pid`` holds."""
        return int(await db.fetchval("select count(*) from pg_stat_activity where $1 = any(pg_blocking_pids(pid))",
                                     pid))

    async def test_other_accounts_are_served_while_imports_hold_their_connections(self, http, infra,
                                                                                 db) -> None:
        """With an API pool of 3, four accounts' imports held mid-transaction (the test locks the contact each
        one updates) leave another account's requests served; the import beyond the import pool is a 503."""
        settings = make_settings(*infra, QLARA_DB_POOL_MAX="3", QLARA_IMPORT_POOL_MAX="2")
        importers = [await new_account(db) for _ in range(4)]
        bystander = await new_account(db)
        async with serve(settings, ["api"]) as own, db.acquire() as lock:
            phones = [f"+39338{i:07d}" for i in range(len(importers))]
            for a, phone in zip(importers, phones, strict=True):
                async with http.post(f"{own.url}{C}", json={"phoneNumber": phone}, headers=a.headers) as r:
                    assert r.status == 201
            locked = lock.transaction()
            await locked.start()
            await lock.execute("select 1 from contacts where account_id = any($1) for update",
                               [a.id for a in importers])
            imports = [asyncio.create_task(upload(http, own, a, f"phone,firstName\n{p},Held\n".encode(), "h.csv"))
                       for a, p in zip(importers, phones, strict=True)]
            try:
                async def two_held() -> bool:
                    return await self.blocked_behind(db, lock.get_server_pid()) >= 2

                await wait_until(two_held, what="two imports held")
                # Held: none can finish while the lock is. Another account's request must not wait for them;
                # the wait below only detects the deadlock the fix removes.
                served = asyncio.create_task(contacts_with(http, own, bystander, "x"))
                done, _ = await asyncio.wait([served], timeout=60)
                assert served in done, "another account's request waited behind the imports (API pool exhausted)"
                assert served.result() == []
                assert await self.blocked_behind(db, lock.get_server_pid()) == 2  # the import pool's size
                assert sum(not t.done() for t in imports) >= 2, "the held imports finished: nothing was shown"
            finally:
                await locked.rollback()
            results = await asyncio.gather(*imports)
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200, 503, 503], results
        refused = [body for status, body in results if status == 503]
        assert all("imports are already running" in b["message"] and b["retryAfter"] > 0 for b in refused)

    async def test_one_account_holds_at_most_its_share(self, http, infra, db) -> None:
        """An account whose import is running gets a 429 with Retry-After for a second one, at once."""
        settings = make_settings(*infra, QLARA_IMPORT_POOL_MAX="2")
        a = await new_account(db)
        async with serve(settings, ["api"]) as own, db.acquire() as lock:
            async with http.post(f"{own.url}{C}", json={"phoneNumber": "+393390000001"}, headers=a.headers) as r:
                assert r.status == 201
            locked = lock.transaction()
            await locked.start()
            await lock.execute("select 1 from contacts where account_id = $1 for update", a.id)
            first = asyncio.create_task(upload(http, own, a, b"phone\n+393390000001\n", "1.csv"))
            try:
                await wait_until(lambda: self.blocked_behind(db, lock.get_server_pid()), what="import held")
                second = asyncio.create_task(upload(http, own, a, b"phone\n+393390000002\n", "2.csv"))
                done, _ = await asyncio.wait([second], timeout=60)  # detects the wait the cap removes
                assert second in done, "the account's second import queued behind its first"
                status, body = second.result()
                assert status == 429 and body["retryAfter"] > 0 and "already runs" in body["message"], body
                assert not first.done()
            finally:
                await locked.rollback()
            status, rep = await first
            assert status == 200 and rep["summary"]["updated"] == 1, rep
