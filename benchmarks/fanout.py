"""``fanout``: webhook deliveries/s from one dispatcher process, and what a hanging neighbour costs the others.

The receivers run in a process of their own (``benchmarks/receiver.py``) and verify every signature after
the run. Three parts:

* **burst**: N changes produced at once for 4 healthy endpoints; deliveries / (last arrival - first
  produce), with CPU-ms per 1,000 deliveries of every process;
* **isolation (throughput)**: interleaved A/B bursts, three pairs: the 4 healthy endpoints get M changes
  beside a fifth endpoint that gets M/4, healthy in A, hanging in B (never answers; dispatcher timeout
  5 s); the healthy endpoints' deliveries/s in B against A;
* **isolation (latency)**: interleaved A/B paced phases, three pairs, at a load the dispatcher sustains:
  the healthy endpoint's p99 beside a healthy, then a hanging neighbour with the same traffic.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import aiohttp

from benchmarks import partners, profiling
from benchmarks.common import (
    PORTS,
    Context,
    CpuMeter,
    progress,
    reset_database,
    role,
    shared_infra,
    summarize_ms,
    wal_position,
    with_wal,
)
from benchmarks.receiver import Receiver

TARGET = ">= 3,000 deliveries/s; with a hanging neighbour the healthy endpoints keep >= 90 % of their deliveries/s"
HEALTHY = 4
PAIRS = 3


def sizes(quick: bool) -> tuple[int, int, int, float]:
    """Burst size, isolation burst size, most changes/s of the paced phases, and their seconds."""
    return (6_000, 2_000, 300, 4.0) if quick else (30_000, 8_000, 500, 10.0)


async def _intake_paths(base: str) -> dict[str, float]:
    """What the dispatcher's intake did with the changes so far (qlara_webhook_intake_total by path)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("qlara_webhook_intake_total{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            out[path] = float(line.rsplit(" ", 1)[1])
    return out


async def _burst(recv: Receiver, producer: Any, topic: str, records: list[dict[str, Any]],
                 names: dict[str, str], within_s: float) -> tuple[float, bool]:
    """Produce ``records`` at once; deliveries/s to ``names`` (receiver name -> account id) and whether all of
    theirs arrived."""
    wanted: dict[str, int] = {}
    for r in records:
        wanted[r["accountId"]] = wanted.get(r["accountId"], 0) + 1
    before = {n: len(await recv.fetch(n)) for n in names}
    t0 = time.time()
    await partners.burst(producer, topic, records)
    expect = {n: before[n] + wanted.get(account, 0) for n, account in names.items()}
    complete = True
    for n in names:
        complete &= await recv.wait_count(n, expect[n], within_s)
    last = t0
    delivered = 0
    for n in names:
        got = await recv.fetch(n)
        fresh = sorted(got.values())[before[n]:]
        delivered += len(fresh)
        last = max([last, *fresh])
    return delivered / max(last - t0, 1e-6), complete


async def run(ctx: Context, shared: dict[str, Any]) -> dict[str, Any]:
    """Burst for throughput, then interleaved A/B bursts and paced phases for isolation."""
    burst_n, iso_n, rate, seconds = sizes(ctx.quick)
    await reset_database(ctx, "fanout")
    topic = ctx.prefix("fanout") + "qlara.status-changes"
    recv = Receiver()
    healthy = [f"h{k}" for k in range(HEALTHY)]
    async with recv.serve(PORTS["receiver"]) as base:
        ids: dict[str, str] = {}
        for name in [*healthy, "n"]:
            ids[name], secret = await partners.account_with_webhook(ctx.database_url, name, f"{base}/ok/{name}")
            await recv.add(name, secret)
        ids["hang"], _ = await partners.account_with_webhook(ctx.database_url, "hang", f"{base}/hang/x")
        targets = {n: ids[n] for n in healthy}
        producer = await partners.producer()
        try:
            async with role(ctx, "fanout", "dispatcher", QLARA_WEBHOOK_TIMEOUT="5") as disp:
                # Warm-up (connections, caches), not counted.
                await _burst(recv, producer, topic, [partners.change(ids[h], f"w{i}-{ctx.run_id}-{h}")
                                                     for i in range(50) for h in healthy], targets, 60)
                progress(f"fanout: burst of {burst_n} changes to {HEALTHY} healthy receivers")
                records = [partners.change(ids[healthy[i % HEALTHY]], f"b{i}-{ctx.run_id}") for i in range(burst_n)]
                meter = CpuMeter({"dispatcher": [disp.pid], "receivers": [recv.pid], "generator": [os.getpid()],
                                  **shared_infra()})
                async with profiling.maybe(ctx, "fanout-dispatcher", disp.pid, 5.0) as prof:
                    meter.start()
                    wal_before = await wal_position(ctx.database_url)
                    throughput, complete = await _burst(recv, producer, topic, records, targets, 180)
                    cpu = with_wal(meter.stop(burst_n), wal_before, await wal_position(ctx.database_url))
                paths = await _intake_paths(disp.base)
                progress(f"  burst: {throughput:.0f}/s, complete {complete}; CPU-ms/1k {cpu['cpu_ms_per_1k']}; "
                         f"WAL {cpu['wal_bytes_per_event']:,} B per delivery; intake {paths}")

                iso: list[dict[str, Any]] = []
                for pair in range(PAIRS):
                    row: dict[str, Any] = {}
                    for phase, neighbour in (("A", "n"), ("B", "hang")):
                        recs = [partners.change(ids[healthy[i % HEALTHY]], f"i{pair}{phase}{i}-{ctx.run_id}")
                                for i in range(iso_n)]
                        side = [partners.change(ids[neighbour], f"i{pair}{phase}n{i}-{ctx.run_id}")
                                for i in range(iso_n // HEALTHY)]
                        mixed = [r for k in range(len(side)) for r in (*recs[k * HEALTHY:(k + 1) * HEALTHY], side[k])]
                        per_s, ok = await _burst(recv, producer, topic, mixed, targets, 120)
                        row[phase] = round(per_s, 1)
                        row[f"{phase}_complete"] = ok
                    row["ratio"] = round(row["B"] / row["A"], 3) if row["A"] else None
                    iso.append(row)
                    progress(f"  isolation pair {pair + 1}: healthy {row['A']:.0f}/s beside a healthy neighbour, "
                             f"{row['B']:.0f}/s beside a hanging one ({row['ratio']})")

                # Latency beside a neighbour, at a load the dispatcher sustains (an eighth of the burst figure).
                rate = max(10, min(rate, int(throughput / 8)))
                lat_pairs: list[dict[str, Any]] = []
                for pair in range(PAIRS):
                    row = {}
                    for phase, neighbour in (("A", "n"), ("B", "hang")):
                        n = int(rate * seconds)
                        mine = [partners.change(ids["h0"], f"p{pair}{phase}{i}-{ctx.run_id}") for i in range(n)]
                        beside = [partners.change(ids[neighbour], f"p{pair}{phase}n{i}-{ctx.run_id}")
                                  for i in range(n)]
                        recs = [r for two in zip(mine, beside, strict=True) for r in two]
                        before = len(await recv.fetch("h0"))
                        sched = await partners.paced(producer, topic, recs, rate * 2)
                        got_all = await recv.wait_count("h0", before + n, 20 if ctx.quick else 60)
                        arrivals = await recv.fetch("h0")
                        lat = [arrivals[r["messageId"]] - sched[r["messageId"]] for r in mine
                               if r["messageId"] in arrivals]
                        row[phase] = {**summarize_ms(lat), "sent": n, "received": len(lat), "complete": got_all}
                    row["rate_per_s"] = rate
                    lat_pairs.append(row)
                    progress(f"  latency pair {pair + 1} at {rate}/s: p99 {row['A']['p99_ms']} ms beside a healthy "
                             f"neighbour, {row['B']['p99_ms']} ms beside a hanging one")
                await recv.refresh()
                await recv.verify_all()
        finally:
            await producer.stop()
    ratios = [r["ratio"] for r in iso if r["ratio"] is not None]
    p99_a = [p["A"]["p99_ms"] for p in lat_pairs if p["A"]["p99_ms"] is not None]
    p99_b = [p["B"]["p99_ms"] for p in lat_pairs if p["B"]["p99_ms"] is not None]
    keep = min(ratios) if ratios else None
    met = (throughput >= 3000 and complete and keep is not None and keep >= 0.9
           and all(r["A_complete"] and r["B_complete"] for r in iso) and recv.bad_signatures == 0)
    return {
        "value": round(throughput, 1), "unit": "deliveries/s (one dispatcher, 4 healthy receivers)",
        "baseline": None, "ratio": None, "target": TARGET, "met": met,
        "burst": burst_n, "burst_complete": complete, "cpu": cpu, "intake_paths_after_burst": paths,
        "isolation_throughput": {"pairs": iso, "min_ratio": keep,
                                 "median_ratio": statistics.median(ratios) if ratios else None,
                                 "spread": round(max(ratios) - min(ratios), 3) if ratios else None},
        "isolation_latency": {"pairs": lat_pairs, "p99_ms_A": p99_a, "p99_ms_B": p99_b},
        "duplicates": recv.duplicates, "bad_signatures": recv.bad_signatures, "verified": recv.verified,
        "hanging_requests_seen": recv.hung, "dispatcher_timeout_s": 5,
        "method": "burst: all changes produced at once, deliveries / (last arrival - first produce); isolation: "
                  "interleaved A/B bursts (healthy vs hanging fifth endpoint) and paced phases; receivers in a "
                  "process of their own, every signature verified after the run", **prof.result(),
    }
