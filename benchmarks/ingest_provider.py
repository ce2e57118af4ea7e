"""``ingest_provider``: events/s for native Twilio (1 status per request) and WhatsApp (10 statuses per
request) callbacks, each signed as the provider signs; compared with ``baseline_http`` (requests/s)."""

from __future__ import annotations

import itertools
from typing import Any

from benchmarks import events, loadgen
from benchmarks.common import Context, CpuMeter, progress, role, shared_infra

P99_LIMIT_MS = 50.0


def rates(quick: bool) -> tuple[list[int], list[int], float]:
    """Twilio and WhatsApp request rates, seconds per step."""
    if quick:
        return [250, 500, 1000, 2000, 3000], [25, 50, 100, 200, 400, 800], 2.0
    return ([250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000],
            [25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1500], 5.0)


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Two step searches on one ingress; the baseline is ingest_single's ``baseline_http`` of this run."""
    tw_rates, wa_rates, step_s = rates(ctx.quick)
    async with role(ctx, "provider", "ingress") as ingress:
        url = f"http://127.0.0.1:{ingress.port}"
        progress("ingest_provider: twilio step search")
        meter = CpuMeter({"ingress": [ingress.pid], **shared_infra()}, children_as="generator")
        meter.start()
        tw_best, tw_steps = await loadgen.step_search(ctx, "ingest_provider-twilio", tw_rates, step_s,
                                                      lambda n: itertools.islice(events.twilio_stream(url), n),
                                                      P99_LIMIT_MS)
        # Over the whole search: every accepted receipt counts (the warm-up step adds CPU, not events: a slight
        # overestimate).
        cpu = meter.stop(sum(s.ok for s in tw_steps))
        progress("ingest_provider: whatsapp step search")
        wa_best, wa_steps = await loadgen.step_search(ctx, "ingest_provider-whatsapp", wa_rates, step_s,
                                                      lambda n: itertools.islice(events.whatsapp_stream(url), n),
                                                      P99_LIMIT_MS)
    baseline = shared.get("baseline_http")
    return {
        "value": tw_best, "unit": "Twilio events/s (1 per request, p99 <= 50 ms)", "baseline": baseline,
        "ratio": round(tw_best / baseline, 3) if baseline else None, "target": "report", "met": True,
        "twilio_events_per_s": tw_best, "whatsapp_events_per_s": wa_best * 10, "whatsapp_requests_per_s": wa_best,
        # True when the search ran out of steps without failing: the figure is then a lower bound.
        "twilio_search_capped": tw_best == tw_rates[-1], "whatsapp_search_capped": wa_best == wa_rates[-1],
        "twilio_capacity_events_per_s": round(loadgen.capacity(tw_steps), 1),
        "whatsapp_capacity_events_per_s": round(loadgen.capacity(wa_steps) * 10, 1),
        "whatsapp_ratio_requests": round(wa_best / baseline, 3) if baseline else None,
        "baseline_note": "baseline_http requests/s from ingest_single in this run",
        "twilio_steps": [s.brief() for s in tw_steps], "whatsapp_steps": [s.brief() for s in wa_steps],
        "criterion": "every response 2xx and p99 (from scheduled send time) <= 50 ms", "cpu": cpu,
    }
