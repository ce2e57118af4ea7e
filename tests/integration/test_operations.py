"""Metrics, health, readiness and the CLI, as an operator meets them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys

import asyncpg
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.isolated import free_port
from support.live import post_events, submitted, wait_projected


class TestOperationalEndpoints:
    """/metrics, /healthz and /readyz on the all-roles server."""

    async def test_health_and_readiness(self, http, server) -> None:
        """Liveness is ok and readiness reports Kafka, Postgres and every background loop."""
        async with http.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{server.url}/readyz") as r:
            body = await r.json()
            assert r.status == 200 and set(body["checks"]) == {
                "kafka", "kafka_api", "postgres", "projector", "partitions", "dispatcher"}

    async def test_metrics_count_ingest_and_projection(self, http, server, account) -> None:
        """An accepted event, a forged request and the projection of the event move their /metrics series."""
        series = {
            "accepted": ("qlara_ingest_requests_total", {"outcome": "accepted", "provider": "canonical"}),
            "forged": ("qlara_ingest_requests_total", {"outcome": "unauthorized", "provider": "twilio"}),
            "events": ("qlara_ingest_events_total",
                       {"channel": "SMS", "provider": "canonical", "type": "message.submitted"}),
            "batches": ("qlara_projector_batch_seconds_count", {}),
            "produce": ("qlara_kafka_produce_seconds_count", {}),
        }

        async def scrape() -> dict[str, float]:
            async with http.get(f"{server.url}/metrics") as r:
                assert r.status == 200
                text = await r.text()
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
            return {k: sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())
                    for k, (name, labels) in series.items()}

        before = await scrape()
        sub = submitted(account.id)
        assert (await post_events(http, server, sub)).status == 202
        async with http.post(f"{server.url}/ingest/v1/providers/twilio", data={"MessageSid": "x"},
                             headers={"X-Twilio-Signature": "forged"}) as r:
            assert r.status == 401
        await wait_projected(server.settings)
        after = await scrape()
        assert after["accepted"] - before["accepted"] == 1
        assert after["forged"] - before["forged"] == 1
        assert after["events"] - before["events"] == 1
        assert after["batches"] > before["batches"]
        assert after["produce"] > before["produce"]


class TestCli:
    """The command line as the README shows it."""

    async def test_accounts_create_stores_only_a_hash(self, settings, db: asyncpg.Pool) -> None:
        """`accounts create --json` prints one JSON object; the key is >= 32 bytes of entropy and stored hashed."""
        env = {**os.environ, "QLARA_DATABASE_URL": settings.database_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qlara_events.cli", "accounts", "create", "--name", "demo", "--json",
            env=env, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        created = orjson.loads(out)
        assert set(created) == {"accountId", "apiKey"}
        key = created["apiKey"]
        assert len(key) >= 43 + 3  # qk_ + base64url(32 bytes)
        row = await db.fetchrow("select key_hash, key_prefix from api_keys where account_id = $1",
                                created["accountId"])
        assert row["key_hash"] == hashlib.sha256(key.encode()).digest()
        assert key not in str(dict(row))

    def test_migrate_is_idempotent(self, settings, db) -> None:
        """A second `migrate` applies nothing."""
        env = {**os.environ, "QLARA_DATABASE_URL": settings.database_url, "QLARA_LOG_LEVEL": "warning"}
        out = subprocess.run([sys.executable, "-m", "qlara_events.cli", "migrate"], env=env, check=True,
                             capture_output=True, timeout=60, text=True).stdout
        assert "up to date" in out

    @pytest.mark.parametrize(("setting", "loop"), [("true", "uvloop"), ("false", "asyncio")])
    async def test_serve_runs_and_reports_the_chosen_event_loop(self, settings, setting: str, loop: str) -> None:
        """`serve` runs on uvloop unless QLARA_UVLOOP=false, and says which loop in its start-up lines and log."""
        port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
               "QLARA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "QLARA_KAFKA_TOPIC_PREFIX": settings.topics.prefix,
               "QLARA_HTTP_PORT": str(port), "QLARA_UVLOOP": setting, "QLARA_LOG_LEVEL": "info"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qlara_events.cli", "serve", "--role", "ingress", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            lines: list[str] = []
            while not lines or not lines[-1].startswith("ready on"):
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
                assert line, f"serve exited: {lines}"
                lines.append(line.strip())
            assert f"event loop: {loop}" in lines
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        logged = [orjson.loads(raw) for raw in (await proc.stderr.read()).splitlines() if raw.startswith(b"{")]
        assert {"event": "event_loop", "loop": loop} in [{k: e.get(k) for k in ("event", "loop")} for e in logged]
