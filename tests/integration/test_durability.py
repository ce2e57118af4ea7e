"""The durability contract: 2xx only after Kafka acknowledged; 503 while it cannot; nothing acked is lost.

This test runs its own single-node broker (the project's deploy/local/kafka.sh, on other ports) so it
can kill it without disturbing the shared one.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from qlara_events.config import Settings
from qlara_events.kafka import ensure_topics

from support.live import LiveServer, post_events, read_topic, serve, submitted, wait_until
from support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
KAFKA = ROOT / "deploy" / "local" / "kafka.sh"
NODE, PORT, CONTROLLER = "durability-test", 19392, 19393


def kafka(*args: str) -> None:
    subprocess.run([str(KAFKA), *args], check=True, timeout=120, capture_output=True)


@pytest.fixture(scope="module")
def own_broker() -> Iterator[str]:
    kafka("start", NODE, str(PORT), str(CONTROLLER))
    yield f"127.0.0.1:{PORT}"
    kafka("stop", NODE, "--kill")


@pytest_asyncio.fixture(scope="module")
async def ingress(own_broker: str, infra: tuple[str, str]) -> AsyncIterator[LiveServer]:
    settings: Settings = make_settings(own_broker, infra[1], QLARA_INGEST_PRODUCE_TIMEOUT="3")
    await ensure_topics(settings)
    async with serve(settings, ["ingress"]) as live:
        yield live


class TestKafkaOutage:
    """While Kafka is down the ingress answers 503 + Retry-After; every event it acknowledged survives."""

    async def test_outage_and_recovery(self, http: aiohttp.ClientSession, ingress: LiveServer) -> None:
        """Acked before, refused during, acked after: all acked events are in the topic afterwards."""
        acked: list[str] = []
        for _ in range(20):
            ev = submitted("acct-durability")
            resp = await post_events(http, ingress, ev)
            assert resp.status == 202
            acked.append(ev["id"])

        kafka("stop", NODE, "--kill")
        during = submitted("acct-durability")
        resp = await post_events(http, ingress, during)
        assert resp.status == 503
        assert resp.headers["Retry-After"].isdigit()
        async with http.get(f"{ingress.url}/readyz") as r:
            assert r.status == 503

        kafka("start", NODE, str(PORT), str(CONTROLLER))

        # Providers retry until they get a 2xx; so does this test, bounded by wait_until's deadline.
        async def retried() -> bool:
            return (await post_events(http, ingress, during)).status == 202

        await wait_until(retried, timeout=90, what="ingress to accept again after Kafka restarted")
        acked.append(during["id"])
        after = submitted("acct-durability")
        assert (await post_events(http, ingress, after)).status == 202
        acked.append(after["id"])

        wanted = set(acked)
        found = await read_topic(ingress.settings, ingress.settings.topics.delivery_events,
                                 lambda v: v["id"] in wanted, count=len(wanted), timeout=60)
        assert {v["id"] for v in found} == wanted
