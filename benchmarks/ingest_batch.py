"""``ingest_batch``: events/s for signed canonical requests of 100 events, against aiokafka producing the same
events directly with the same producer settings (acks=all, idempotent) — ``baseline_kafka``."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from benchmarks import baselines, events, loadgen, profiling
from benchmarks.common import Context, CpuMeter, progress, role, shared_infra

BATCH = 100
P99_LIMIT_MS = 50.0
TARGET = ">= 50,000 events/s and >= 0.5 x baseline_kafka"


def rates(quick: bool) -> tuple[list[int], float, int]:
    """Request rates of the step search, seconds per step, events for the Kafka baseline."""
    if quick:
        return [10, 25, 50, 100, 200, 300], 2.0, 50_000
    return [10, 25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800], 5.0, 300_000


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Baseline first (nothing else running), then the ingress step search."""
    req_rates, step_s, baseline_events = rates(ctx.quick)
    account = "acct-bench-batch"
    progress(f"ingest_batch: baseline_kafka producing {baseline_events} events")
    records = []
    for _ in range(baseline_events // BATCH):
        batch = []
        for _ in range(BATCH):
            mid = events.unique("m")
            ev = events.submitted(account, mid, "SM" + mid)
            batch.append((f"twilio:SM{mid}".encode(), orjson.dumps(ev)))
        records.append(batch)
    base = await baselines.kafka_produce(ctx, "batch", records)
    progress(f"  baseline_kafka: {base['events_per_s']} events/s")
    async with role(ctx, "batch", "ingress") as ingress:
        url = f"http://127.0.0.1:{ingress.port}"
        stream = events.canonical_batch(url, account, BATCH)
        meter = CpuMeter({"ingress": [ingress.pid], **shared_infra()}, children_as="generator")
        meter.start()
        best, steps = await loadgen.step_search(ctx, "ingest_batch", req_rates, step_s,
                                                lambda n: itertools.islice(stream, n), P99_LIMIT_MS)
        cpu = meter.stop(sum(s.ok for s in steps) * BATCH)  # accepted events of the search (warm-up: CPU only)
        prof = profiling.Profile()
        if ctx.profile and best:
            async with profiling.maybe(ctx, "ingest_batch-ingress", ingress.pid, step_s) as prof:
                await loadgen.run_step(ctx, "ingest_batch-profiled", best, step_s,
                                       lambda n: itertools.islice(stream, n))
    value = best * BATCH
    ratio = value / base["events_per_s"] if base["events_per_s"] else None
    return {
        "value": value, "unit": "events/s (100 per request, p99 <= 50 ms)", "baseline": base["events_per_s"],
        "ratio": None if ratio is None else round(ratio, 3), "target": TARGET,
        "met": value >= 50_000 and ratio is not None and ratio >= 0.5,
        "requests_per_s": best, "search_capped": best == req_rates[-1],
        "capacity_events_per_s": round(loadgen.capacity(steps) * BATCH, 1),
        "baseline_kafka": base, "steps": [s.brief() for s in steps],
        "criterion": "every response 2xx and p99 (from scheduled send time) <= 50 ms", "cpu": cpu,
        **prof.result(),
    }
