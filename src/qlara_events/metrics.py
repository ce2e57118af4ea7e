"""Every Prometheus metric, defined once (names follow Prometheus conventions).

One process-wide default registry: a process runs one or all roles, and each role only touches its own
series. ``/metrics`` on every role serves :func:`render`.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "qlara_http_requests_total", "HTTP requests served, by route and status code.", ["role", "route", "code"]
)
HTTP_LATENCY = Histogram(
    "qlara_http_request_duration_seconds", "HTTP request latency by route.", ["role", "route"],
    buckets=LATENCY_BUCKETS,
)
INGEST_REQUESTS = Counter(
    "qlara_ingest_requests_total",
    "Ingest requests by provider (or 'canonical') and outcome "
    "(accepted, handshake, unauthorized, rejected, too_large, unavailable, disabled, abandoned: the client "
    "went away, or the server stopped, before the answer).",
    ["provider", "outcome"],
)
INGEST_OVERLOADED = Counter(
    "qlara_ingest_overloaded_total",
    "Ingest requests refused with 503 at once because the process already had QLARA_INGEST_MAX_IN_FLIGHT "
    "in flight, by provider (or 'canonical').",
    ["provider"],
)
INGEST_IN_FLIGHT = Gauge(
    "qlara_ingest_in_flight_requests", "Ingest requests this process is working on (admitted, not yet answered)."
)
INGEST_EVENTS = Counter(
    "qlara_ingest_events_total", "Events accepted into Kafka by provider, channel and event type.",
    ["provider", "channel", "type"],
)
PRODUCE_LATENCY = Histogram(
    "qlara_kafka_produce_seconds", "Time from produce to broker acknowledgement of a request's events.",
    ["topic"], buckets=LATENCY_BUCKETS,
)
INGEST_DEAD_LETTERS = Counter(
    "qlara_ingest_rejected_total", "Authenticated payloads kept in the rejected-ingest topic.", ["provider"]
)
PROJECTOR_BATCH_SIZE = Histogram(
    "qlara_projector_batch_events", "Events per projector batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
PROJECTOR_BATCH_DURATION = Histogram(
    "qlara_projector_batch_seconds", "Time to apply one batch in Postgres (one transaction).",
    buckets=LATENCY_BUCKETS,
)
PROJECTOR_EVENTS = Counter(
    "qlara_projector_events_total",
    "Events applied by the projector by type and effect (applied, duplicate, orphaned, superseded, ...).",
    ["type", "effect"],
)
PROJECTOR_RETRIES = Counter(
    "qlara_projector_batch_retries_total", "Batches retried after a transient database error.", ["reason"]
)
TRANSITIONS = Counter(
    "qlara_status_transitions_total", "Real status transitions by new status and channel.", ["status", "channel"]
)
CONSUMER_LAG = Gauge(
    "qlara_consumer_lag_messages", "Messages behind the log end, per consumer group and partition.",
    ["group", "topic", "partition"],
)
ORPHANS = Gauge(
    "qlara_orphan_receipts", "Receipts waiting for their message.submitted (kept, applied when it arrives)."
)
KEY_LOOKUPS = Counter(
    "qlara_api_key_lookups_total",
    "Authenticated API requests by where their key was resolved: cache (no database round trip) or database"
    " (the key, or its rate-limit windows, not held by this process, or its key cache not trusted just now).",
    ["source"],
)
RATE_LIMIT_SYNCS = Counter(
    "qlara_rate_limit_syncs_total", "Background reconciliations of in-memory rate-limit counts, by outcome.",
    ["outcome"],
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST

WEBHOOK_ATTEMPTS = Counter(
    "qlara_webhook_attempts_total",
    "Webhook delivery attempts by outcome (succeeded, failed, dead, gone, superseded).", ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "qlara_webhook_delivery_latency_seconds",
    "From the status change being committed to the partner's 2xx (first success of each delivery).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000),
)
WEBHOOK_RETRY_QUEUE = Gauge("qlara_webhook_retry_queue_depth", "Deliveries waiting for a retry.")
WEBHOOK_DEAD = Gauge("qlara_webhook_dead_lettered", "Deliveries whose retries are exhausted (replayable).")
WEBHOOK_DISABLED = Gauge("qlara_webhook_disabled", "Webhooks disabled (410 or continuous failure).")
WEBHOOK_BREAKER = Gauge(
    "qlara_webhook_circuit_state", "Circuit-breaker state per webhook: 0 closed, 1 open, 2 half-open.",
    ["webhook_id"],
)
WEBHOOK_INTAKE = Counter(
    "qlara_webhook_intake_total",
    "Status changes taken by the dispatcher's intake, by what became of them: direct (first attempt at once),"
    " queued (waited for a slot), spilled_waiting / spilled_slow / spilled_breaker / spilled_stopping (written"
    " to the retry schedule), duplicate (already had a delivery), superseded, disabled, no_webhook, unreadable.",
    ["path"],
)
WEBHOOK_IN_FLIGHT = Gauge("qlara_webhook_in_flight", "Delivery attempts in progress in this process.")
