"""``ingest_single``: the highest rate of single signed canonical events with p99 <= 50 ms, against the bare
aiohttp baseline on the same generator; and p50/p99/p99.9 at 1,000/s."""

from __future__ import annotations

from typing import Any

from benchmarks import baselines, events, loadgen, profiling
from benchmarks.common import Context, CpuMeter, progress, role, shared_infra

P99_LIMIT_MS = 50.0
TARGET = ">= 0.5 x baseline_http; p99 <= 20 ms at 1,000/s"


def rates(quick: bool) -> tuple[list[int], float]:
    """Step rates and seconds per step."""
    if quick:
        return [250, 500, 1000, 2000, 3000, 4000], 2.0
    return [250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 8000], 5.0


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Both searches and the 1,000/s latency run; leaves ``baseline_http`` in ``shared`` for ingest_provider."""
    steps_rates, step_s = rates(ctx.quick)
    fixed_s = 5.0 if ctx.quick else 15.0
    account = "acct-bench-single"
    async with baselines.http_server(ctx) as base:
        url = f"http://127.0.0.1:{base.port}"
        progress("ingest_single: baseline_http step search")
        base_best, base_steps = await loadgen.step_search(
            ctx, "baseline_http", steps_rates, step_s, lambda n: events.take(events.canonical_single(url, account), n),
            P99_LIMIT_MS)
        base_fixed = await loadgen.run_step(ctx, "baseline_http-fixed1000", 1000, fixed_s,
                                            lambda n: events.take(events.canonical_single(url, account), n))
    shared["baseline_http"] = base_best
    shared["baseline_http_steps"] = [s.brief() for s in base_steps]
    async with role(ctx, "ingest", "ingress") as ingress:
        url = f"http://127.0.0.1:{ingress.port}"
        # 1,000/s first, after a warm-up, on a service that is not still draining the search's overload.
        await loadgen.run_step(ctx, "ingest_single-warmup", 250, 1.0,
                               lambda n: events.take(events.canonical_single(url, account), n))
        meter = CpuMeter({"ingress": [ingress.pid], **shared_infra()}, children_as="generator")
        meter.start()
        async with profiling.maybe(ctx, "ingest_single-ingress", ingress.pid, fixed_s) as prof:
            fixed = await loadgen.run_step(ctx, "ingest_single-fixed1000", 1000, fixed_s,
                                           lambda n: events.take(events.canonical_single(url, account), n))
        cpu = meter.stop(fixed.ok)
        progress(f"  CPU-ms per 1,000 events at 1,000/s: {cpu['cpu_ms_per_1k']}")
        progress("ingest_single: ingress step search")
        best, steps = await loadgen.step_search(
            ctx, "ingest_single", steps_rates, step_s, lambda n: events.take(events.canonical_single(url, account), n),
            P99_LIMIT_MS)
    ratio = best / base_best if base_best else None
    p99 = fixed.scheduled["p99_ms"]
    met = ratio is not None and ratio >= 0.5 and fixed.ok == fixed.sent and p99 is not None and p99 <= 20.0
    return {
        "value": best, "unit": "requests/s (1 event each) with p99 <= 50 ms", "baseline": base_best,
        "ratio": None if ratio is None else round(ratio, 3), "target": TARGET, "met": met,
        "at_1000_per_s": {**fixed.scheduled, "ok": fixed.ok, "sent": fixed.sent,
                          "service_p99_ms": fixed.service["p99_ms"]},
        "baseline_at_1000_per_s": {**base_fixed.scheduled, "ok": base_fixed.ok, "sent": base_fixed.sent},
        "search_capped": best == steps_rates[-1], "capacity_rps": round(loadgen.capacity(steps), 1),
        "baseline_capacity_rps": round(loadgen.capacity(base_steps), 1),
        "steps": [s.brief() for s in steps], "baseline_steps": shared["baseline_http_steps"],
        "criterion": "every response 2xx and p99 (from scheduled send time) <= 50 ms", "cpu": cpu,
        **prof.result(),
    }

