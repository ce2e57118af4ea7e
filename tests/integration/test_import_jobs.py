"""Issue #11 item 6: contact imports as durable jobs (``Prefer: respond-async``), on the real service.

An asynchronous upload is stored in the blob store and answered 202 with a job to poll; a worker of the api role
runs the same import and records the report the synchronous upload returns. The job survives its worker: one
queued while no worker runs, or whose worker is killed mid-import, is completed by another worker, once.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from qlara_events.store import accounts

from support.isolated import api_process, isolated_database
from support.live import Account, uid, wait_until

P = "/partner-gateway/v1"
C = f"{P}/contacts"
ASYNC = {"Prefer": "respond-async"}


def form(data: bytes, file_name: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field("fileName", file_name)
    f.add_field("file", io.BytesIO(data), filename=file_name, content_type="application/octet-stream")
    return f


async def upload(http: aiohttp.ClientSession, base: str, account: Account, data: bytes, file_name: str, *,
                 headers: dict[str, str] | None = None,
                 path: str = f"{C}/upload") -> tuple[int, Any, dict[str, str]]:
    """A multipart import; (status, JSON body, response headers)."""
    async with http.post(f"{base}{path}", data=form(data, file_name),
                         headers={**account.headers, **(headers or {})}) as r:
        return r.status, await r.json(), dict(r.headers)


async def job(http: aiohttp.ClientSession, base: str, account: Account, location: str) -> tuple[int, Any]:
    async with http.get(f"{base}{location}", headers=account.headers) as r:
        return r.status, await r.json()


async def finished(http: aiohttp.ClientSession, base: str, account: Account, location: str,
                   timeout: float = 60) -> dict[str, Any]:
    """The job at ``location`` once COMPLETED or FAILED."""
    async def ended() -> dict[str, Any] | None:
        status, body = await job(http, base, account, location)
        assert status == 200, body
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    return await wait_until(ended, timeout=timeout, what=f"import job {location} to end")


async def queue(http: aiohttp.ClientSession, base: str, account: Account, data: bytes, file_name: str,
                path: str = f"{C}/upload") -> str:
    """An asynchronous upload answered 202; returns its Location."""
    status, body, headers = await upload(http, base, account, data, file_name, headers=ASYNC, path=path)
    assert status == 202, body
    assert headers.get("Preference-Applied") == "respond-async"
    assert headers["Location"] == f"{C}/upload/{body['importId']}"
    assert body["status"] == "PENDING" and body["fileName"] == file_name and body["createdAt"], body
    return headers["Location"]


def csv_with_errors(tag: str) -> bytes:
    """Three good rows (one repeated), an invalid number, a row with neither phone nor email, a blank row."""
    return (f"phone,firstName,email\n+393401000001,{tag}A,\n+393401000002,{tag}B,\nnot-a-number,{tag}C,\n"
            f",{tag}D,\n,,\n+393401000003,{tag}E,e{tag}@example.com\n+393401000001,{tag}A2,\n").encode()


async def count(http: aiohttp.ClientSession, base: str, account: Account) -> int:
    async with http.get(f"{base}{C}", params={"limit": "1000"}, headers=account.headers) as r:
        assert r.status == 200
        return len(await r.json())


class TestAsyncUpload:
    """Prefer: respond-async gives a job whose result is the synchronous report."""

    async def test_job_result_equals_the_synchronous_report(self, http, server, account, other_account) -> None:
        """The same CSV, imported synchronously by one account and as a job by another, gives the same report
        (per-row errors included) and the same contacts."""
        tag = uid("job")
        data = csv_with_errors(tag)
        status, sync, _ = await upload(http, server.url, other_account, data, "people.csv")
        assert status == 200, sync
        assert sync["summary"]["errors"] == 2 and len(sync["errors"]) == 2, sync  # the report shows the errors
        location = await queue(http, server.url, account, data, "people.csv")
        done = await finished(http, server.url, account, location)
        assert done["status"] == "COMPLETED" and done["error"] is None, done
        assert done["result"] == sync
        assert done["startedAt"] and done["completedAt"] and done["createdAt"] <= done["completedAt"]
        assert await count(http, server.url, account) == await count(http, server.url, other_account) == 3

    async def test_vcard_job(self, http, server, account) -> None:
        """The vCard upload takes the preference too, and its job imports the cards."""
        cards = b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada Job\r\nTEL:+393402000001\r\nEND:VCARD\r\n"
        location = await queue(http, server.url, account, cards, "a.vcf", path=f"{C}/upload/vcard")
        done = await finished(http, server.url, account, location)
        assert done["status"] == "COMPLETED" and done["result"]["format"] == "VCARD", done
        assert done["result"]["summary"]["created"] == 1

    async def test_other_preferences_stay_synchronous(self, http, server, account) -> None:
        """Without respond-async among the preferences, the upload answers 200 with the report, as Qlara
        documents; the preference is found among others, in any case."""
        status, body, headers = await upload(http, server.url, account, b"phone\n+393403000001\n", "s.csv",
                                             headers={"Prefer": "return=minimal, wait=10"})
        assert status == 200 and body["summary"]["created"] == 1 and "Preference-Applied" not in headers, body
        status, body, _ = await upload(http, server.url, account, b"phone\n+393403000002\n", "s.csv",
                                       headers={"Prefer": "wait=5, Respond-Async"})
        assert status == 202, body

    async def test_another_account_gets_404(self, http, server, account, other_account) -> None:
        """An import id is only the uploading account's."""
        location = await queue(http, server.url, account, b"phone\n+393404000001\n", "mine.csv")
        status, body = await job(http, server.url, other_account, location)
        assert status == 404 and body["status"] == 404, body
        status, body = await job(http, server.url, account, f"{C}/upload/{2**63 - 1}")
        assert status == 404, body
        status, body = await job(http, server.url, account, f"{C}/upload/nope")
        assert status == 404, body

    async def test_corrupt_xlsx_fails_with_its_error(self, http, server, account) -> None:
        """A corrupt workbook queued as a job ends FAILED with the 400 body the synchronous upload gives and
        keeps no contact; a file name no reader takes is a 400 before any job is queued."""
        data = b"PK\x03\x04 this is not a workbook"
        status, sync, _ = await upload(http, server.url, account, data, "broken.xlsx")
        assert status == 400, sync
        location = await queue(http, server.url, account, data, "broken.xlsx")
        done = await finished(http, server.url, account, location)
        assert done["status"] == "FAILED" and done["result"] is None, done
        assert done["error"] == sync
        assert await count(http, server.url, account) == 0
        # What the form says is judged before anything is queued: an unsupported file name is a 400 at once.
        status, body, _ = await upload(http, server.url, account, data, "broken.pdf", headers=ASYNC)
        assert status == 400 and "unsupported file type" in body["message"], body


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != "api.log"]


@contextlib.asynccontextmanager
async def own_database(test_url: str, suffix: str) -> AsyncIterator[tuple[str, asyncpg.Connection, Account, Path]]:
    """A database of the test's own (no other worker sees its jobs), a connection, an account, a storage dir."""
    async with isolated_database(test_url, suffix) as url:
        conn = await asyncpg.connect(url)
        try:
            yield url, conn, Account(*await accounts.create_account(conn, suffix)), \
                Path(tempfile.mkdtemp(prefix="qlara-import-jobs-"))
        finally:
            await conn.close()


class TestDurability:
    """A job outlives the process that queued it and the worker that ran it."""

    async def test_job_queued_without_a_worker_is_completed_by_a_later_one(self, http, infra) -> None:
        """Queued on an api process that runs no import worker, the job stays PENDING with its file stored;
        a worker started afterwards imports it exactly once and removes the file."""
        kafka, test_url = infra
        rows = 50
        data = ("phone,firstName\n" + "".join(f"+39341{i:07d},Late\n" for i in range(rows))).encode()
        async with own_database(test_url, "import_jobs_late") as (url, conn, account, storage):
            env = {"QLARA_STORAGE_DIR": str(storage), "QLARA_IMPORT_WORKERS": "0"}
            async with api_process(http, kafka=kafka, database_url=url, extra_env=env) as api:
                location = await queue(http, api.base, account, data, "late.csv")
                assert (await job(http, api.base, account, location))[1]["status"] == "PENDING"
            assert len(_files(storage)) == 1  # the upload, streamed to the blob store
            row = await conn.fetchrow("select status, attempts from contact_imports")
            assert (row["status"], row["attempts"]) == ("PENDING", 0)  # nobody ran it
            env["QLARA_IMPORT_WORKERS"] = "1"
            async with api_process(http, kafka=kafka, database_url=url, extra_env=env) as api:
                done = await finished(http, api.base, account, location)
            assert done["status"] == "COMPLETED", done
            assert done["result"]["summary"] == {"total": rows, "created": rows, "updated": 0, "errors": 0,
                                                 "skipped": 0}
            assert await conn.fetchval("select count(*) from contacts where account_id = $1", account.id) == rows
            assert await conn.fetchval("select attempts from contact_imports") == 1
            assert _files(storage) == []

    async def test_job_whose_worker_is_killed_mid_import_is_resumed_once(self, http, infra) -> None:
        """A worker killed while its import is in its transaction leaves nothing; once its lease expires another
        worker runs the job, and its report counts each contact once."""
        kafka, test_url = infra
        rows = 20
        data = ("phone,firstName\n" + "".join(f"+39342{i:07d},Killed\n" for i in range(rows))).encode()
        async with own_database(test_url, "import_jobs_kill") as (url, conn, account, storage):
            lock = await asyncpg.connect(url)
            try:
                env = {"QLARA_STORAGE_DIR": str(storage), "QLARA_IMPORT_LEASE": "2"}
                async with api_process(http, kafka=kafka, database_url=url, extra_env=env) as api:
                    async with http.post(f"{api.base}{C}", json={"phoneNumber": "+393420000000"},
                                         headers=account.headers) as r:
                        assert r.status == 201  # the first row's contact: the test holds it locked
                    held = lock.transaction()
                    await held.start()
                    await lock.execute("select 1 from contacts where account_id = $1 for update", account.id)
                    location = await queue(http, api.base, account, data, "killed.csv")

                    async def blocked() -> bool:
                        return bool(await conn.fetchval(
                            "select count(*) from pg_stat_activity where $1 = any(pg_blocking_pids(pid))",
                            lock.get_server_pid()))

                    await wait_until(blocked, what="the import to wait in its transaction")
                    assert (await job(http, api.base, account, location))[1]["status"] == "RUNNING"
                    api.proc.kill()
                    await api.proc.wait()
                    await held.rollback()
                # The killed worker's transaction never committed: none of its rows is there.
                assert await conn.fetchval("select count(*) from contacts where account_id = $1", account.id) == 1
                async with api_process(http, kafka=kafka, database_url=url, extra_env=env) as api:
                    done = await finished(http, api.base, account, location)
                assert done["status"] == "COMPLETED", done
                assert done["result"]["summary"]["created"] == rows - 1
                assert done["result"]["summary"]["updated"] == 1
                assert await conn.fetchval("select count(*) from contacts where account_id = $1", account.id) == rows
                assert await conn.fetchval("select attempts from contact_imports") == 2
                assert _files(storage) == []
            finally:
                await lock.close()

