"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--profile] [--only NAME ...]``.

Writes ``benchmarks/results/<UTC date>-<hostname>.json`` and regenerates ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import secrets
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks import (
    campaign_confirm,
    contacts_import,
    end_to_end,
    fanout,
    history_scale,
    ingest_batch,
    ingest_provider,
    ingest_single,
    projector_drain,
    results,
    status_poll,
    webhook_client,
)
from benchmarks.common import (
    KAFKA,
    RESULTS_DIR,
    ROOT,
    Context,
    CpuWatch,
    machine,
    postgres_version,
    progress,
    reset_database,
)
from benchmarks.loadgen import VEGETA
from qlara_events import logs
from qlara_events.kafka import delete_topics

Scenario = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "ingest_single": ingest_single.run,
    "ingest_batch": ingest_batch.run,
    "ingest_provider": ingest_provider.run,
    "projector_drain": projector_drain.run,
    "end_to_end": end_to_end.run,
    "webhook_client": webhook_client.run,
    "fanout": fanout.run,
    "campaign_confirm": campaign_confirm.run,
    "history_scale": history_scale.run,
    "status_poll": status_poll.run,
    "contacts_import": contacts_import.run,
}


def merge_partial(day: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The day's results with this ``--only`` run's scenarios replaced, each marked with the run that measured it
    (a partial run must not wipe the figures of the scenarios it did not run)."""
    merged = dict(day)
    merged["scenarios"] = dict(day["scenarios"])
    machine_ = dict(day["machine"])
    machine_["what_else_ran"] = {**day["machine"].get("what_else_ran", {}), **run["machine"]["what_else_ran"]}
    for name, row in run["scenarios"].items():
        merged["scenarios"][name] = {**row, "measured_in_run": run["machine"]["run_id"]}
    machine_["partial_runs"] = [*day["machine"].get("partial_runs", []),
                                {"run_id": run["machine"]["run_id"], "started_at": run["machine"]["started_at"],
                                 "scenarios": sorted(run["scenarios"])}]
    merged["machine"] = machine_
    return merged


def generator_cpu() -> int | None:
    """Pin vegeta to the last CPU when there are at least two (BENCH_GENERATOR_CPU overrides; 'none' unpins)."""
    raw = os.environ.get("BENCH_GENERATOR_CPU", "")
    if raw.lower() == "none":
        return None
    if raw:
        return int(raw)
    n = os.cpu_count() or 1
    return n - 1 if n >= 2 else None


async def main(argv: list[str]) -> int:
    """Run the selected scenarios and write the results."""
    ap = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="each scenario briefly (about 5 min in all)")
    ap.add_argument("--profile", action="store_true", help="py-spy the system under test during key steps")
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--render", type=Path, metavar="JSON", help="only regenerate RESULTS.md from a results file")
    args = ap.parse_args(argv)
    if args.render:
        results.write(orjson.loads(args.render.read_bytes()), args.render, ROOT / "benchmarks" / "RESULTS.md")
        return 0
    logs.configure("warning", "console")  # the bench's own Kafka/admin chatter is not progress
    if not VEGETA.exists():
        sys.exit("vegeta is missing: run `make bench-tools`")
    started = dt.datetime.now(dt.UTC)
    run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    wanted = args.only or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="qlara-bench-") as tmp:
        ctx = Context(run_id=run_id, quick=args.quick, profile=args.profile, generator_cpu=generator_cpu(),
                      workdir=Path(tmp))
        await reset_database(ctx, "setup")
        out: dict[str, Any] = {
            "machine": machine(await postgres_version(ctx.database_url), ctx.generator_cpu),
            "quick": args.quick, "scenarios": {},
        }
        # The issue fixes the top level to machine / quick / scenarios: run facts live with the machine's.
        out["machine"].update(run_id=run_id, started_at=started.isoformat(timespec="seconds"))
        progress(f"run {run_id} ({'quick' if args.quick else 'full'}): {', '.join(wanted)}")
        shared: dict[str, Any] = {}
        t_run = time.monotonic()
        try:
            for i, name in enumerate(wanted, 1):
                progress(f"[{i}/{len(wanted)}] {name}")
                watch = CpuWatch(ctx)
                watch.start()
                t0 = time.monotonic()
                try:
                    row = await SCENARIOS[name](ctx, shared)
                except Exception as exc:  # -- one broken scenario must not lose the others' figures
                    traceback.print_exc()
                    row = {"value": None, "unit": "", "baseline": None, "ratio": None, "target": "", "met": False,
                           "error": f"{type(exc).__name__}: {exc}"[:500]}
                row["seconds"] = round(time.monotonic() - t0, 1)
                out["scenarios"][name] = row
                out["machine"]["what_else_ran"][name] = watch.stop()
                progress(f"[{i}/{len(wanted)}] {name}: {row['value']} {row['unit']} "
                         f"(baseline {row['baseline']}, ratio {row['ratio']}, met {row['met']}) in {row['seconds']}s")
        finally:
            await delete_topics(KAFKA, f"bench.{run_id}.")
        out["machine"]["duration_s"] = round(time.monotonic() - t_run, 1)
    # A quick run gets its own file so it never overwrites the day's full results.
    suffix = "-quick" if args.quick else ""
    json_path = RESULTS_DIR / f"{started.strftime('%Y-%m-%d')}-{platform.node() or 'host'}{suffix}.json"
    if args.only and json_path.exists():
        out = merge_partial(orjson.loads(json_path.read_bytes()), out)
    results.write(out, json_path, ROOT / "benchmarks" / "RESULTS.md")
    progress(f"wrote {json_path.relative_to(ROOT)} and benchmarks/RESULTS.md in {out['machine']['duration_s']} s")
    sys.stdout.write(results.markdown(out, json_path.name))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
