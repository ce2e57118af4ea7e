"""A database and an ``api`` process of a test's own, for measurements that must happen in that process.

The session's in-process server runs the same background workers (exporter, campaign runner) on the shared
test database, and workers share jobs through the database: a job queued there could be done by the session
server instead of the measured process, and the measurement would measure nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from benchmarks.common import Service, vmhwm_kib
from qlara_events.store.migrate import migrate

from support.live import wait_until

__all__ = ["api_process", "free_port", "isolated_database", "vmhwm_kib"]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def isolated_database(test_url: str, suffix: str) -> AsyncIterator[str]:
    """A migrated database beside the session's (``<name>_<suffix>``), dropped afterwards."""
    parts = urlsplit(test_url)
    name = f"{parts.path.lstrip('/')}_{suffix}"
    url = urlunsplit(parts._replace(path="/" + name))
    admin = await asyncpg.connect(test_url)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.execute(f'create database "{name}"')
        try:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
            yield url
        finally:
            await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def api_process(http: aiohttp.ClientSession, *, kafka: str, database_url: str,
                      extra_env: Mapping[str, str] | None = None, role: str = "api") -> AsyncIterator[Service]:
    """Start an api (or ``role``) process on a free port with its own storage directory; stop it on exit."""
    port = free_port()
    storage = tempfile.mkdtemp(prefix="qlara-api-test-")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QLARA_")},
           "QLARA_DATABASE_URL": database_url, "QLARA_KAFKA_BOOTSTRAP": kafka, "QLARA_HTTP_PORT": str(port),
           "QLARA_STORAGE_DIR": storage, "QLARA_URL_SIGNING_KEY": "k", "QLARA_LOG_LEVEL": "warning",
           **(extra_env or {})}
    log = Path(storage) / "api.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "qlara_events.cli", "serve", "--role",
                                                    role, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        async def ready() -> bool:
            assert proc.returncode is None, log.read_text()[-2000:]
            try:
                async with http.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(ready, timeout=60, what=f"{role} process ready")
        yield Service(role, proc, port, log)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
