"""``serve --role all --processes`` (what ``make run`` starts): one process per role under one supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import uuid

import orjson

from support.isolated import free_port
from support.live import LiveServer, post_events, status, submitted, wait_until
from support.settings import new_account


async def _line(stream: asyncio.StreamReader, prefix: str, lines: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"the supervisor's output ended before a line starting {prefix!r}: {lines}")
        line = raw.decode().rstrip()
        lines.append(line)
        if line.startswith(prefix):
            return line


class TestProcesses:
    """The make run contract holds with every role in a process of its own."""

    async def test_one_base_url_ready_line_pipeline_and_ctrl_c(self, settings, db, http, tmp_path) -> None:
        """The dev key and one ready line are printed; ingress and API answer on the base URL; a receipt
        becomes a status through the separate projector; SIGINT stops every child and the supervisor exits 0."""
        base_port = free_port()
        while any(_busy(base_port + k) for k in (1, 2)):
            base_port = free_port()
        prefix = f"t{uuid.uuid4().hex[:8]}."
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
               "QLARA_HTTP_PORT": str(base_port), "QLARA_DATABASE_URL": settings.database_url,
               "QLARA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "QLARA_KAFKA_TOPIC_PREFIX": prefix,
               "QLARA_KAFKA_PARTITIONS": "3", "QLARA_PROJECTOR_GROUP": f"{prefix}projector",
               "QLARA_DISPATCHER_GROUP": f"{prefix}dispatcher", "QLARA_LOG_LEVEL": "warning",
               "QLARA_STORAGE_DIR": str(tmp_path / "storage")}
        key_file = tmp_path / "dev-api-key"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qlara_events.cli", "serve", "--role", "all", "--processes", "--dev", "--migrate",
            "--dev-key-file", str(key_file), env=env, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            ready = await asyncio.wait_for(_line(proc.stdout, "ready on ", lines), 120)
            base = f"http://127.0.0.1:{base_port}"
            assert ready == f"ready on {base} (Ctrl-C to stop)"
            assert f"development API key: {key_file.read_text().strip()}" in lines
            assert sum(1 for line in lines if line.startswith("ready")) == 1
            async with http.get(f"{base}/partner-gateway/v1/openapi.json") as r:
                assert r.status == 200
            account = await new_account(db)
            sub = submitted(account.id)
            resp = await post_events(http, LiveServer(base, settings), [sub, status("DELIVERED", message_id=sub["messageId"])])
            assert resp.status == 202

            async def delivered() -> bool:
                async with http.get(f"{base}/partner-gateway/v1/messages/status/{sub['customerMessageId']}",
                                    params={"channel": "SMS"}, headers=account.headers) as r:
                    return r.status == 200 and orjson.loads(await r.read())["deliveryStatus"] == "DELIVERED"

            await wait_until(delivered, timeout=60, what="status projected by the projector process")
            proc.send_signal(signal.SIGINT)
            rest, _ = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0
            assert "stopped:" in rest.decode()
            for k in range(3):
                assert not _busy(base_port + k), f"port {base_port + k} still served after the stop"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _busy(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0

