"""Producing accepted events to Kafka before answering, and keeping rejected payloads.

The durability contract: a request is answered 2xx only after the broker acknowledged every one of its
events (idempotent producer, ``acks=all``). A Kafka outage or a produce slower than
``QLARA_INGEST_PRODUCE_TIMEOUT`` becomes :class:`~qlara_events.errors.Unavailable` (503 + Retry-After); the
provider retries, and the deterministic event ids make a retry of a half-produced request harmless.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Mapping, Sequence

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from qlara_events import metrics
from qlara_events.config import Settings
from qlara_events.domain.events import Event, to_json
from qlara_events.errors import Unavailable
from qlara_events.kafka import HEADER_VIA, make_producer, received_at_header
from qlara_events.logs import get_logger, redact, redact_query

log = get_logger("ingress.publisher")


class Publisher:
    """Owns the ingress's Kafka producer; reconnects in the background while Kafka is down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def start(self, *, wait_s: float = 30.0) -> None:
        """Connect, waiting up to ``wait_s``; past that keep trying in the background (requests get 503)."""
        self._connecting = asyncio.create_task(self._connect_forever(), name="publisher-connect")
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting), wait_s)
        except TimeoutError:
            log.warning("kafka_unavailable_at_start", bootstrap=self._settings.kafka_bootstrap)

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            producer = make_producer(self._settings, client_id="qlara-ingress")
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                log.warning("kafka_connect_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._producer = producer
            log.info("kafka_producer_ready")
            return

    async def stop(self) -> None:
        """Flush what is in flight and close."""
        if self._connecting and not self._connecting.done():
            self._connecting.cancel()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def check(self) -> None:
        """Readiness: the producer is connected and the cluster's metadata is reachable."""
        if self._producer is None:
            raise Unavailable("Kafka producer not connected")
        await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 5.0)

    async def publish(self, events: Sequence[Event], *, via: str, received_at: dt.datetime) -> None:
        """Produce every event and wait until the broker acknowledged all of them."""
        if not events:
            return
        topic = self._settings.topics.delivery_events
        headers = [(HEADER_VIA, via.encode()), received_at_header(received_at)]
        records = [(e.key.encode(), orjson.dumps(to_json(e))) for e in events]
        await self._produce(topic, records, headers)
        for e in events:
            channel = getattr(e, "channel", None)
            metrics.INGEST_EVENTS.labels(via, channel.value if channel else "", e.type).inc()

    async def produce_json(self, topic: str, key: str, value: object) -> None:
        """Produce one JSON record and wait for its acknowledgement (503 semantics as for events)."""
        await self.produce_many(topic, [(key, value)])

    async def produce_many(self, topic: str, records: Sequence[tuple[str, object]]) -> None:
        """Produce JSON records together and wait until every one is acknowledged."""
        await self._produce(topic, [(k.encode(), orjson.dumps(v)) for k, v in records], [])

    async def dead_letter(self, *, via: str, reason: str, headers: Mapping[str, str], query: str,
                          body: bytes, received_at: dt.datetime) -> None:
        """Keep an authenticated payload the ingress rejected, raw, with its headers, for inspection/replay."""
        record = orjson.dumps({
            "via": via,
            "reason": reason,
            "receivedAt": received_at.isoformat(),
            "headers": redact(dict(headers)),
            "query": redact_query(query),
            "body": body.decode("utf-8", "backslashreplace"),
        })
        await self._produce(self._settings.topics.ingest_rejected, [(via.encode(), record)],
                            [(HEADER_VIA, via.encode()), received_at_header(received_at)])
        metrics.INGEST_DEAD_LETTERS.labels(via).inc()

    async def _produce(self, topic: str, records: Sequence[tuple[bytes, bytes]],
                       headers: list[tuple[str, bytes]]) -> None:
        producer = self._producer
        retry_after = self._settings.ingest_retry_after_s
        if producer is None:
            raise Unavailable("Kafka is unavailable; retry later", retry_after=retry_after)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.ingest_produce_timeout_s):
                futures = [await producer.send(topic, value=v, key=k, headers=headers) for k, v in records]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            log.warning("produce_failed", topic=topic, events=len(records), error=repr(exc))
            raise Unavailable("Kafka did not acknowledge the events; retry later", retry_after=retry_after) from exc
        metrics.PRODUCE_LATENCY.labels(topic).observe(time.perf_counter() - started)
