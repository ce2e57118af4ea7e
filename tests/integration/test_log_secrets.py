"""Credentials never reach a log line or a stored payload (#11 items 8 and 12).

- A provider token passed as ``?token=`` (Infobip, Jasmin) is redacted in the raw payload kept in
  ``qlara.ingest-rejected``, the rest of the query as sent.
- ``GET /authentication/{value}`` carries a raw API key in its path; when that request fails with a 5xx (the
  api process's database vanishes under it), the log names the route pattern, never the path.
"""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from qlara_events.config import DEV_SECRETS
from qlara_events.store import accounts

from support.isolated import api_process, isolated_database
from support.live import LiveServer, read_topic, uid

P = "/partner-gateway/v1"


@pytest.mark.parametrize("provider", ["jasmin", "infobip"])
async def test_query_token_is_redacted_in_the_rejected_payload(http: aiohttp.ClientSession, server: LiveServer,
                                                               provider: str) -> None:
    token = DEV_SECRETS[f"QLARA_{provider.upper()}_TOKEN"]
    marker = uid("unreadable-")
    content_type = "application/json" if provider == "infobip" else "application/x-www-form-urlencoded"
    body = b'{"results": "%s"}' % marker.encode() if provider == "infobip" else f"junk={marker}".encode()
    async with http.post(f"{server.url}/ingest/v1/providers/{provider}", params={"token": token, "ref": marker},
                         data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == 400, await r.text()
    kept = await read_topic(server.settings, server.settings.topics.ingest_rejected, lambda v: marker in v["body"])
    assert kept[0]["via"] == provider
    assert token not in kept[0]["query"]
    assert kept[0]["query"] == f"token=[redacted]&ref={marker}"


@pytest.mark.slow
async def test_a_raw_key_in_the_path_is_not_logged_on_a_5xx(http: aiohttp.ClientSession,
                                                           infra: tuple[str, str]) -> None:
    kafka, test_url = infra
    async with isolated_database(test_url, "logkey") as url:
        conn = await asyncpg.connect(url)
        try:
            _, key = await accounts.create_account(conn, "log-secrets")
        finally:
            await conn.close()
        async with api_process(http, kafka=kafka, database_url=url,
                               extra_env={"QLARA_LOG_LEVEL": "info"}) as api:
            base = f"http://127.0.0.1:{api.port}{P}/authentication"
            async with http.get(f"{base}/{key}", headers={"X-API-Key": key}) as r:
                assert r.status == 200  # the key works, and its path is served
            admin = await asyncpg.connect(test_url)
            try:
                await admin.execute(f'drop database "{url.rsplit("/", 1)[1]}" with (force)')
            finally:
                await admin.close()
            async with http.get(f"{base}/{key}", headers={"X-API-Key": key}) as r:
                assert r.status >= 500, await r.text()
            log = api.log.read_text()
            assert "/authentication/{value}" in log  # the failure was logged, by its route
            assert key not in log
            secret_part = key.split("_", 1)[1]
            assert secret_part not in log
