"""Run the failure scenarios and report them.

    python -m chaos.run            every scenario (`make chaos`); regenerates the table in docs/reliability.md
    python -m chaos.run --short    broker restart and projector kill on a reduced load, own cluster and ports
                                   (tests/integration/test_chaos_short.py); never touches the shared PostgreSQL

Results (JSON) go to ``--json`` (default ``.local/chaos/<run>/results.json``), process logs and the receiver's
record next to it. Exit status 1 when any scenario broke a guarantee.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from chaos import scenarios
from chaos.cluster import ROOT, Cluster, postgres
from chaos.harness import Config, Harness, Outcome

REPORT = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos:results:begin -->", "<!-- chaos:results:end -->"


def log(line: str) -> None:
    """Progress on stderr, one line per step."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


async def machine(database_url: str) -> dict[str, Any]:
    """What the run ran on."""
    pom = (ROOT / "deploy" / "local" / "pom.xml").read_text()
    kafka = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    pg = "unknown"
    try:
        conn = await asyncpg.connect(database_url)
        try:
            pg = str(await conn.fetchval("show server_version"))
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError):
        pass
    return {"hostname": socket.gethostname(), "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "python": platform.python_version(), "kafka": kafka.group(1) if kafka else "unknown", "postgres": pg,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def _fmt(v: float | None, unit: str = " s") -> str:
    return "—" if v is None else f"{v:g}{unit}"


def table(outcomes: list[dict[str, Any]]) -> str:
    """The results table in Markdown."""
    head = ("| scenario | events acknowledged | lost (not yet projected) | duplicated in history"
            " | duplicate webhooks (same id / new id) | webhooks missing | final statuses wrong"
            " | lag after settle (projector / dispatcher) | recovery time"
            " | worst receipt → webhook | settle after load | result |\n" + "|---" * 12 + "|\n")
    rows = []
    for o in outcomes:
        a = o["accounting"]
        rows.append(
            f"| {o['description']} | {a['events_acknowledged']:,} | {a['lost']} ({a.get('unprojected', 0)}) |"
            f" {a['duplicated_in_history']} |"
            f" {a['duplicate_webhooks'] - a['duplicates_with_new_id']} / {a['duplicates_with_new_id']} |"
            f" {a['webhooks_missing']} | {a['status_mismatches']} | {a['lag_projector']} / {a['lag_dispatcher']} |"
            f" {_fmt(o['recovery_s'])} | {_fmt(o['e2e_max_s'])} | {_fmt(o['settle_s'])} |"
            f" {'pass' if o['ok'] else 'FAIL'} |")
    return head + "\n".join(rows) + "\n"


def detail(outcomes: list[dict[str, Any]]) -> str:
    """Per-scenario figures behind the table."""
    out = []
    for o in outcomes:
        a, ld = o["accounting"], o["load"]
        answers = ", ".join(f"{k}: {v:,}" for k, v in ld["answers"].items())
        out.append(
            f"- **{o['name']}** — {o['fault']}. Generator: {ld['requests']:,} requests ({answers}),"
            f" {ld['connection_errors']:,} connection errors, {ld['gave_up']} given up;"
            f" {a['events_unacknowledged']} events never acknowledged, {a['extra_in_history']} of those stored anyway."
            f" History rows {a['history_rows']:,}; statuses {a['status_counts']}; webhook deliveries"
            f" {a['webhook_states']}, {a['webhooks_received']:,} requests received for {a['webhooks_expected']:,}"
            f" expected changes. End-to-end (receipt acknowledged → webhook received) before the fault:"
            f" p50 {_fmt(o['e2e_p50_before_s'])}, p99 {_fmt(o['e2e_p99_before_s'])}; worst {_fmt(o['e2e_max_s'])};"
            f" caught up = nothing waiting longer than {_fmt(o['caught_up_s'])}."
            + ("" if o["ok"] else f" **Broken:** {'; '.join(a['failures'])}. Examples: {a['examples']}"))
    return "\n".join(out) + "\n"


def render(results: dict[str, Any]) -> str:
    """The generated section of docs/reliability.md."""
    m, c = results["machine"], results["config"]
    return (
        f"{BEGIN}\n"
        f"_Generated by `make chaos` on {results['date']} (run {results['run']}, {results['duration_s']:.0f} s)."
        f" Do not edit by hand._\n\n"
        f"Machine: `{m['hostname']}`, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']},"
        f" Kafka {m['kafka']} (three KRaft nodes, RF 3, min.insync.replicas=2), PostgreSQL {m['postgres']};"
        f" load average at the end {m['load_average_at_end']} (the machine is shared: other work ran beside it)."
        f" Load per scenario: {c['events_per_s']:g} events/s ({c['per_request']} messages per request) for"
        f" {c['duration_s']:g} s, fault at {c['fault_at_s']:g} s; webhook retry schedule {c['retry_schedule']}.\n\n"
        f"{table(results['scenarios'])}\n{detail(results['scenarios'])}{END}"
    )


def write_report(results: dict[str, Any]) -> None:
    """Replace the generated section of docs/reliability.md (the rest of the file is prose)."""
    text = REPORT.read_text() if REPORT.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    start, end = text.index(BEGIN), text.index(END) + len(END)
    REPORT.write_text(text[:start] + render(results) + text[end:])


async def main_async(args: argparse.Namespace) -> int:
    """Set up, run the scenarios one at a time, tear down, report."""
    started = time.time()
    run_dir = ROOT / ".local" / "chaos" / time.strftime("%Y%m%dT%H%M%S")
    short = bool(args.short)
    cluster = Cluster(name="chaos-short" if short else "chaos", base_port=19292 if short else 19192,
                      heap="384m" if short else "512m")
    config = Config(
        short=short,
        events_per_s=args.rate or (200.0 if short else 1000.0),
        duration_s=args.duration or (12.0 if short else 60.0),
        fault_at_s=args.fault_at or (3.0 if short else 15.0),
        settle_s=45.0 if short else 150.0,
        cluster=cluster,
        port_base=18110 if short else 18100,
        database_url=args.database_url,
        run_dir=run_dir,
    )
    chosen = scenarios.short() if short else scenarios.full()
    if args.only:
        chosen = [s for s in chosen if s.name in args.only.split(",")]
    if not short and any(s.name == "postgres" for s in chosen):
        log("WARNING: the postgres scenario restarts the SHARED PostgreSQL on 127.0.0.1:55432 for a few seconds")
    harness = Harness(config)
    outcomes: list[Outcome] = []
    try:
        await harness.setup(log)
        for sc in chosen:
            log(f"scenario {sc.name}: {sc.description}")
            outcome = await harness.run(sc, log)
            outcomes.append(outcome)
            if outcome.unready:
                await harness.heal(sorted(outcome.unready), log)
            a = outcome.accounting
            log(f"  {'pass' if outcome.ok else 'FAIL'}: acknowledged {a.events_acknowledged}, lost {a.lost},"
                f" duplicated in history {a.duplicated_in_history}, duplicate webhooks {a.duplicate_webhooks}"
                f" (new id {a.duplicates_with_new_id}), missing webhooks {a.webhooks_missing},"
                f" recovery {outcome.recovery_s} s, settle {outcome.settle_s} s"
                + ("" if outcome.ok else f"; broken: {'; '.join(a.failures)}"))
    finally:
        await harness.teardown()
        if not short:
            await postgres("start")  # whatever happened, leave the shared PostgreSQL running
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "run": harness.run_id,
        "duration_s": time.time() - started,
        "short": short,
        "machine": await machine(config.database_url),
        "config": {"events_per_s": config.events_per_s, "duration_s": config.duration_s,
                   "per_request": config.per_request,
                   "fault_at_s": config.fault_at_s, "caught_up_s": config.caught_up_s,
                   "retry_schedule": harness.env["QLARA_WEBHOOK_RETRY_SCHEDULE"]},
        "scenarios": [o.as_dict() for o in outcomes],
        "ok": all(o.ok for o in outcomes) and len(outcomes) == len(chosen),
    }
    json_path = Path(args.json) if args.json else run_dir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if not short and not args.only:
        write_report(results)
        log(f"table written to {REPORT.relative_to(ROOT)}")
    print(table(results["scenarios"]))
    log(f"{'all scenarios passed' if results['ok'] else 'SOME SCENARIOS FAILED'}; results in {json_path}")
    return 0 if results["ok"] else 1


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m chaos.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the reduced version run by make test")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:55432/qlara_chaos")
    p.add_argument("--rate", type=float, help="events per second (default 1000, short 200)")
    p.add_argument("--duration", type=float, help="seconds of load per scenario (default 60, short 12)")
    p.add_argument("--fault-at", type=float, help="seconds into the load when the fault hits (default 15, short 3)")
    p.add_argument("--only", help="comma-separated scenario names (a partial run does not rewrite the report)")
    p.add_argument("--json", help="where to write the results")
    p.add_argument("--render", metavar="RESULTS_JSON",
                   help="only regenerate the table in docs/reliability.md from a full run's results.json")
    args = p.parse_args()
    if args.render:
        results = orjson.loads(Path(args.render).read_bytes())
        if results.get("short"):
            sys.exit("the report holds full runs only")
        write_report(results)
        sys.exit(0 if results["ok"] else 1)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
