"""``status_poll`` (issue #17): partners polling delivery status at thousands of requests per second.

Setup (not measured): 100 accounts with a key each and a message history loaded by history_scale's loader
(2,000,000 messages; quick: 500,000; ``BENCH_STATUS_POLL_SMOKE=1``: 20,000, a minute-long smoke run of two
workloads that proves the scenario runs and measures nothing). Then four workloads, each request for a random
message of its account:

* ``single_hot`` / ``single_zipf``: ``GET /messages/status/{customerMessageId}?channel=``, every request with
  one hot key / with 100 keys drawn Zipf (key k with weight 1/k);
* ``batch_hot`` / ``batch_zipf``: ``GET /messages/status?ids=`` of 100 SMS messages of the account.

Each workload runs first against ``baseline_status`` (benchmarks/baseline_status.py: bare aiohttp, keys from a
dict, the same indexed query, one round trip: the floor of "one read per request"), then against one
``serve --role api`` process (rate limits lifted, so every answer is a 2xx): a step search for the highest
rate sustained with p99 <= 20 ms (from schedule), and a fixed rate (1,000/s single, 100/s = 10,000 statuses/s
batch) with CPU-ms per 1,000 requests of the server process and of the Postgres backends. The api's own
``qlara_api_key_lookups_total`` says how many requests resolved their key without a round trip.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg

from benchmarks import history_scale, loadgen
from benchmarks.common import PORTS, Context, CpuMeter, Service, progress, reset_database, role, service, shared_infra
from qlara_events.store import accounts

P = "/partner-gateway/v1"
P99_LIMIT_MS = 20.0
ACCOUNTS = 100
BATCH = 100
TARGET = "api >= 0.5 x baseline_status (single read, 100 keys Zipf) with p99 <= 20 ms; p99 <= 20 ms at 1,000/s"
WORKLOADS = ("single_hot", "single_zipf", "batch_hot", "batch_zipf")
LIFTED = "production:100000000/1000000"


def _smoke() -> bool:
    return os.environ.get("BENCH_STATUS_POLL_SMOKE", "") == "1"


def sizes(ctx: Context) -> dict[str, Any]:
    """History size, step rates and durations of this run."""
    if _smoke():
        return {"history": 20_000, "single": [200, 400], "batch": [20, 40], "step_s": 1.0, "fixed_s": 2.0,
                "workloads": ("single_zipf", "batch_zipf")}
    if ctx.quick:
        return {"history": 500_000, "single": [500, 1000, 1500, 2000, 3000, 4000], "batch": [50, 100, 200, 400],
                "step_s": 2.0, "fixed_s": 5.0, "workloads": WORKLOADS}
    return {"history": 2_000_000, "single": [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000],
            "batch": [50, 100, 200, 300, 400, 600, 800, 1000], "step_s": 5.0, "fixed_s": 15.0,
            "workloads": WORKLOADS}


def _targets(base: str, keys: list[str], per_month: int, workload: str,
             rng: random.Random) -> Callable[[int], list[loadgen.Target]]:
    """A target maker for one workload (history_scale's layout: message i of month n is account i % 100's,
    customerMessageId ``c<n>-<i>``, WhatsApp when i % 3 == 0)."""
    weights = [1 / (k + 1) for k in range(len(keys))]
    per_account = per_month // len(keys)

    def message(account: int, sms_only: bool) -> tuple[str, str]:
        while True:
            n, i = rng.randrange(history_scale.MONTHS), account + len(keys) * rng.randrange(per_account)
            channel = "WHATSAPP" if i % 3 == 0 else "SMS"
            if not sms_only or channel == "SMS":
                return f"c{n}-{i}", channel

    def make(count: int) -> list[loadgen.Target]:
        picks = [0] * count if workload.endswith("_hot") else rng.choices(range(len(keys)), weights, k=count)
        out = []
        for a in picks:
            headers = {"X-API-Key": keys[a]}
            if workload.startswith("single"):
                cid, channel = message(a, sms_only=False)
                url = f"{base}{P}/messages/status/{cid}?channel={channel}"
            else:
                ids = ",".join(message(a, sms_only=True)[0] for _ in range(BATCH))
                url = f"{base}{P}/messages/status?channel=SMS&ids={ids}"
            out.append(loadgen.Target(url, b"", headers, method="GET"))
        return out

    return make


@contextlib.asynccontextmanager
async def baseline_server(ctx: Context) -> AsyncIterator[Service]:
    """benchmarks/baseline_status.py as a subprocess on its port."""
    argv = [sys.executable, "-m", "benchmarks.baseline_status", str(PORTS["baseline_status"]), ctx.database_url]
    async with service(ctx, "baseline_status", argv, ctx.env("status_poll"),
                       PORTS["baseline_status"]) as svc:
        yield svc


async def _measure(ctx: Context, svc: Service, name: str, make: Callable[[int], list[loadgen.Target]],
                   rates: list[int], fixed_rate: int, step_s: float, fixed_s: float) -> dict[str, Any]:
    """Fixed rate with CPU per 1,000 requests first (after a warm-up), then the step search."""
    await loadgen.run_step(ctx, f"{name}-warmup", max(rates[0] // 2, 10), 1.0, make)
    meter = CpuMeter({name.split("-")[0]: [svc.pid], **shared_infra(ctx.database_url.rsplit("/", 1)[1])},
                     children_as="generator")
    meter.start()
    fixed = await loadgen.run_step(ctx, f"{name}-fixed{fixed_rate}", fixed_rate, fixed_s, make)
    cpu = meter.stop(fixed.ok)
    best, steps = await loadgen.step_search(ctx, name, rates, step_s, make, P99_LIMIT_MS)
    return {"best_rps": best, "search_capped": best == rates[-1], "capacity_rps": round(loadgen.capacity(steps), 1),
            "fixed": {**fixed.brief(), "ok": fixed.ok, "sent": fixed.sent}, "cpu": cpu,
            "steps": [s.brief() for s in steps]}


async def _key_lookups(svc: Service) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{svc.base}/metrics") as r:
        text = await r.text()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^qlara_api_key_lookups_total\{source="(\w+)"\} (\S+)$', text, re.M)}


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Load the history, measure every workload against the baseline, then against the api."""
    plan = sizes(ctx)
    await reset_database(ctx, "status_poll")
    conn = await asyncpg.connect(ctx.database_url)
    try:
        keys: list[str] = []
        ids: list[str] = []
        for a in range(ACCOUNTS):
            account_id, raw = await accounts.create_account(conn, f"poll-{a}")
            ids.append(account_id)
            keys.append(raw)
        progress(f"status_poll: loading {plan['history']:,} messages")
        built = await history_scale._load(conn, ids, plan["history"])
    finally:
        await conn.close()
    rng = random.Random(17)
    results: dict[str, dict[str, Any]] = {w: {} for w in plan["workloads"]}

    def args(w: str) -> tuple[list[int], int]:
        return (plan["single"], 1000) if w.startswith("single") else (plan["batch"], 100)

    async with baseline_server(ctx) as base:
        for w in plan["workloads"]:
            rates, fixed_rate = args(w)
            make = _targets(base.base, keys, built["per_month"], w, rng)
            results[w]["baseline"] = await _measure(ctx, base, f"baseline-{w}", make, rates, fixed_rate,
                                                    plan["step_s"], plan["fixed_s"])
    async with role(ctx, "status_poll", "api", QLARA_RATE_LIMIT_PLANS=LIFTED) as api:
        for w in plan["workloads"]:
            rates, fixed_rate = args(w)
            make = _targets(api.base, keys, built["per_month"], w, rng)
            results[w]["api"] = await _measure(ctx, api, f"api-{w}", make, rates, fixed_rate, plan["step_s"],
                                               plan["fixed_s"])
        lookups = await _key_lookups(api)
    for r in results.values():
        b = r["baseline"]["best_rps"]
        r["ratio"] = round(r["api"]["best_rps"] / b, 3) if b else None
    head = "single_zipf"
    api_best, base_best = results[head]["api"]["best_rps"], results[head]["baseline"]["best_rps"]
    ratio = results[head]["ratio"]
    p99 = results[head]["api"]["fixed"]["p99_ms"]
    fixed_ok = all(r["api"]["fixed"]["ok"] == r["api"]["fixed"]["sent"] for r in results.values())
    met = (not _smoke() and ratio is not None and ratio >= 0.5 and p99 is not None and p99 <= P99_LIMIT_MS
           and fixed_ok)
    total = sum(lookups.values())
    return {
        "value": api_best, "unit": f"single status reads/s with p99 <= 20 ms, 100 keys Zipf, {built['rows']:,} "
        "messages" + (" (SMOKE: measures nothing)" if _smoke() else ""),
        "baseline": base_best, "ratio": ratio, "target": TARGET, "met": met,
        "at_1000_per_s": results[head]["api"]["fixed"], "baseline_at_1000_per_s": results[head]["baseline"]["fixed"],
        "workloads": results, "cpu": results[head]["api"]["cpu"],
        "key_lookups": {**lookups, "cache_share": round(lookups.get("cache", 0.0) / total, 4) if total else None},
        "history": built, "smoke": _smoke(),
        "method": "open loop (vegeta), latency from schedule; baseline_status first, then one api process, same "
                  "targets' shape; fixed rate: 1,000/s single, 100/s batch of 100; CPU from /proc at the fixed rate",
    }

