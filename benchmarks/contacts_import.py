"""``contacts_import``: one streamed multipart CSV upload of 100,000 rows (20,000 quick) through the HTTP API,
every 97th phone number malformed (the request of tests/integration/test_contacts.py::test_100k_rows_streamed),
against asyncpg ``copy_records_to_table`` of the same valid rows, already parsed, into a scratch table created
``(like contacts including all)``, so the index cost is the same (issue #15: the 60 s the test used to hold).

The api process (``serve --role api``) answers the upload with the report once every row is written (200); the
scenario checks the report's summary counts and reports rows/s, CPU per 1,000 rows and peak RSS growth.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import asyncpg

from benchmarks.common import (
    BIN,
    PORTS,
    Context,
    CpuMeter,
    progress,
    reset_database,
    service,
    shared_infra,
    vmhwm_kib,
)
from qlara_events.store import accounts

SCENARIO: Final = "contacts_import"
TARGET: Final = ("report (rows/s of one streamed 100,000-row CSV upload through the API against COPY of the "
                 "valid rows into an identically indexed table; met = complete with the right counts)")
PORT: Final = PORTS["api"]
API: Final = f"http://127.0.0.1:{PORT}/partner-gateway/v1"
BAD_EVERY: Final = 97
PREVIEW: Final = 5
CHUNK_ROWS: Final = 2000
#: Rows of the unmeasured warm-up upload (phone numbers after the measured ones').
WARM_UP: Final = 100
COLUMNS: Final = ("account_id", "phone_number", "email", "first_name", "last_name", "is_valid",
                  "communication_supported")


def rows_for(quick: bool) -> int:
    """Rows of the upload."""
    return 20_000 if quick else 100_000


def phone(i: int) -> str:
    """Row ``i``'s phone: an Italian mobile, or a malformed one every ``BAD_EVERY`` rows (as in the test)."""
    return "12ab" if i % BAD_EVERY == 0 else f"+39333{i:07d}"


async def csv_body(n: int, offset: int = 0) -> AsyncIterator[bytes]:
    """Rows ``offset`` … ``offset + n - 1`` as CSV, generated while they are sent (never whole in memory), in
    chunks of ``CHUNK_ROWS`` rows; the warm-up (``offset`` > 0) has no malformed phone."""
    yield b"firstName,lastName,phoneNumber,email\n"
    chunk: list[str] = []
    for i in range(offset, offset + n):
        number = phone(i) if not offset else f"+39334{i:07d}"
        chunk.append(f"Name{i},Surname{i},{number},u{i}@example.com\n")
        if len(chunk) == CHUNK_ROWS:
            yield "".join(chunk).encode()
            chunk = []
    if chunk:
        yield "".join(chunk).encode()


async def baseline_copy(conn: asyncpg.Connection, account_id: str, n: int) -> dict[str, Any]:
    """COPY the upload's valid rows, parsed, into ``contacts_copy (like contacts including all)``."""
    records = [(account_id, phone(i), f"u{i}@example.com", f"Name{i}", f"Surname{i}", True, ["SMS"])
               for i in range(n) if i % BAD_EVERY != 0]
    await conn.execute("drop table if exists contacts_copy; create table contacts_copy (like contacts including all)")
    try:
        meter = CpuMeter({"postgres_backend": [conn.get_server_pid()]})
        meter.start()
        t = time.perf_counter()
        await conn.copy_records_to_table("contacts_copy", records=records, columns=COLUMNS)
        seconds = time.perf_counter() - t
        cpu = meter.stop(len(records))
        copied = await conn.fetchval("select count(*) from contacts_copy")
    finally:
        await conn.execute("drop table if exists contacts_copy")
    return {"rows": len(records), "rows_in_table": copied, "seconds": round(seconds, 3),
            "rows_per_s": round(len(records) / seconds, 1),
            "postgres_cpu_ms_per_1k_rows": cpu["cpu_ms_per_1k"]["postgres_backend"],
            "method": "asyncpg copy_records_to_table, one call, into a table created (like contacts including all)"}


async def upload(http: aiohttp.ClientSession, key: str, n: int, offset: int = 0) -> tuple[int, Any]:
    """The test's ``upload`` request: multipart with fileName, limit and the streamed file part."""
    form = aiohttp.FormData()
    form.add_field("fileName", "big.csv")
    form.add_field("limit", str(PREVIEW))
    form.add_field("file", csv_body(n, offset), filename="big.csv", content_type="application/octet-stream")
    async with http.post(f"{API}/contacts/upload", data=form, headers={"X-API-Key": key},
                         timeout=aiohttp.ClientTimeout(total=600)) as r:
        return r.status, await r.json()


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """The COPY baseline first, then the upload through a fresh api process."""
    n = rows_for(ctx.quick)
    errors = len(range(0, n, BAD_EVERY))
    await reset_database(ctx, SCENARIO)
    conn = await asyncpg.connect(ctx.database_url)
    try:
        account_id, key = await accounts.create_account(conn, "bench-contacts-import")
        progress(f"{SCENARIO}: baseline_copy of {n - errors:,} parsed rows into contacts_copy")
        base = await baseline_copy(conn, account_id, n)
        progress(f"  baseline_copy: {base['rows_per_s']:,.0f} rows/s; upload of {n:,} rows")
        env = ctx.env(SCENARIO, QLARA_HTTP_PORT=str(PORT), QLARA_PUBLIC_BASE_URL=f"http://127.0.0.1:{PORT}",
                      QLARA_STORAGE_DIR=str(ctx.workdir / "storage"))
        argv = [str(BIN / "qlara-events"), "serve", "--role", "api"]
        async with service(ctx, f"{SCENARIO}-api", argv, env, PORT) as api, aiohttp.ClientSession() as http:
            # Not measured: a small upload of other numbers opens the import pool's connection (the pool
            # connects on first use) and loads the code paths, so the meter below finds its backend.
            status, warm = await upload(http, key, WARM_UP, offset=n)
            assert status == 200 and warm["summary"]["created"] == WARM_UP, warm
            before_kib = vmhwm_kib(api.pid)
            infra = shared_infra()
            meter = CpuMeter({"api": [api.pid], **infra})
            meter.start()
            t = time.perf_counter()
            status, rep = await upload(http, key, n)
            seconds = time.perf_counter() - t
            # Backends that connected during the upload: all their CPU is the import's.
            new = [p for p in shared_infra()["postgres"] if p not in infra["postgres"]]
            meter.add("postgres_new", new, whole_life=True)
            cpu = meter.stop(n)
            after_kib = vmhwm_kib(api.pid)
        in_table = await conn.fetchval("select count(*) from contacts where account_id = $1", account_id) - WARM_UP
    finally:
        await conn.execute("truncate contacts cascade")
        await conn.close()
    want = {"total": n, "created": n - errors, "updated": 0, "errors": errors, "skipped": 0}
    summary = rep.get("summary") if isinstance(rep, dict) else None
    complete = status == 200 and in_table == n - errors
    counts_right = (summary == want and len(rep.get("preview", [])) == PREVIEW
                    and len(rep.get("errors", [])) == min(errors, 1000))
    rate = round(n / seconds, 1)
    per_1k = cpu["cpu_ms_per_1k"]
    pg_ms = round(per_1k.get("postgres", 0.0) + per_1k.get("postgres_new", 0.0), 1)
    ratio = round(rate / base["rows_per_s"], 3) if base["rows_per_s"] else None
    progress(f"  upload: {status}, {n:,} rows in {seconds:.1f}s = {rate:,.0f} rows/s ({ratio} x COPY), "
             f"api {cpu['cpu_ms_per_1k'].get('api')} CPU-ms per 1,000 rows, Postgres "
             f"{pg_ms}, peak RSS +{(after_kib - before_kib) / 1024:.1f} MiB")
    return {
        "value": rate,
        "unit": f"rows/s, one streamed {n:,}-row CSV upload through the API (every {BAD_EVERY}th phone malformed); "
                f"baseline: COPY of the {n - errors:,} valid rows into a table with the same indexes",
        "baseline": base["rows_per_s"], "ratio": ratio, "target": TARGET, "met": bool(complete and counts_right),
        "complete": complete, "counts_right": counts_right, "status": status, "summary": summary,
        "expected_summary": want, "contacts_in_table": in_table, "rows": n, "upload_s": round(seconds, 2),
        "cpu": cpu, "api_cpu_ms_per_1k_rows": per_1k.get("api"), "postgres_cpu_ms_per_1k_rows": pg_ms,
        "peak_rss_before_mib": round(before_kib / 1024, 1),
        "peak_rss_after_mib": round(after_kib / 1024, 1),
        "peak_rss_growth_mib": round((after_kib - before_kib) / 1024, 1),
        "baseline_copy": base,
        "method": "upload_s = the upload request's send to its 200 report (the api writes every row before "
                  "answering); CPU = CpuMeter over the api process and the Postgres backends (the import pool's, "
                  "opened by an unmeasured 100-row warm-up upload, plus any that connected during the upload, "
                  "counted whole); peak RSS = VmHWM of the api process before the upload and after",
    }
