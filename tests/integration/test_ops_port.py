"""/metrics and /readyz are operators' endpoints (#11 item 14): with ``QLARA_OPS_PORT`` they leave the serving
port for a port of their own, and /readyz never returns exception text (addresses, driver messages)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from support.isolated import free_port
from support.live import wait_until

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def ingress(http: aiohttp.ClientSession, kafka: str, database: str, **env: str) -> AsyncIterator[
        tuple[int, int, Path]]:
    """An ingress process (serving port, ops port, log) once its /healthz answers on the serving port."""
    port, ops = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="qlara-ops-")) / "ingress.log"
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
            "QLARA_KAFKA_BOOTSTRAP": kafka, "QLARA_DATABASE_URL": database, "QLARA_HTTP_PORT": str(port),
            "QLARA_OPS_PORT": str(ops), "QLARA_TWILIO_AUTH_TOKEN": "ops-port-test-token", **env}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "qlara_events.cli", "serve", "--role",
                                                    "ingress", env=full, stdout=out, stderr=out)
    try:
        async def up() -> bool:
            assert proc.returncode is None, log.read_text()[-2000:]
            try:
                async with http.get(f"http://127.0.0.1:{ops}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(up, timeout=60, what="ingress ops port")
        yield port, ops, log
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_metrics_and_readiness_move_to_the_ops_port(http: aiohttp.ClientSession,
                                                          infra: tuple[str, str]) -> None:
    async with ingress(http, *infra) as (port, ops, _):
        # Live is not ready: the ops port answers /healthz while the producer may still be connecting (a CI
        # run met a 503 here), so wait for readiness and then check what it says.
        async def ready() -> bool:
            async with http.get(f"http://127.0.0.1:{ops}/readyz") as r:
                return r.status == 200 and (await r.json())["checks"] == {"kafka": "ok"}

        await wait_until(ready, timeout=60, what="ingress readiness on the ops port")
        async with http.get(f"http://127.0.0.1:{ops}/metrics") as r:
            assert r.status == 200 and "qlara_ingest_in_flight" in await r.text()
        for path in ("/metrics", "/readyz"):
            async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                assert r.status == 404, path
                assert (await r.json())["status"] == 404
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200  # liveness stays where load balancers look for it
        async with http.post(f"http://127.0.0.1:{port}/ingest/v1/providers/twilio", data={"MessageSid": "x"},
                             headers={"X-Twilio-Signature": "forged"}) as r:
            assert r.status == 401  # the serving port still serves


async def test_readiness_says_unavailable_without_internals(http: aiohttp.ClientSession,
                                                            infra: tuple[str, str]) -> None:
    """Kafka unreachable at a private address: /readyz is 503 naming the check, and only the log says why."""
    dead = f"127.0.0.1:{free_port()}"
    async with ingress(http, dead, infra[1], QLARA_LOG_LEVEL="info") as (_, ops, log):
        async with http.get(f"http://127.0.0.1:{ops}/readyz") as r:
            assert r.status == 503
            body = await r.json()
        assert body == {"status": "unavailable", "checks": {"kafka": "unavailable"}}

        async def logged() -> bool:
            return '"not_ready"' in log.read_text()

        await wait_until(logged, timeout=10, what="the readiness failure in the log")
