"""Pure helpers of the benchmark suite: schedule-based latency, percentiles, the results file and table."""

from __future__ import annotations

import pytest

from benchmarks.common import percentile
from benchmarks.contacts_import import BAD_EVERY, csv_body
from benchmarks.loadgen import Hit, analyze
from benchmarks.results import check, markdown


def _row(value: float | None = 1.0) -> dict[str, object]:
    return {"value": value, "unit": "events/s", "baseline": 2.0, "ratio": 0.5, "target": ">= 1", "met": True}


def _results(**scenarios: dict[str, object]) -> dict[str, object]:
    machine = {"cpu_model": "x", "cores": 2, "what_else_ran": {"ingest_single": {"others_cpu_s": {"java": 1.5}}}}
    return {"machine": machine, "quick": True, "scenarios": scenarios}


class TestPercentile:
    """Nearest-rank percentiles."""

    def test_nearest_rank(self) -> None:
        """p50 of 1..100 is 50, p99 is 99, p99.9 is the maximum."""
        values = [float(v) for v in range(1, 101)]
        assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 0.999)) == (50.0, 99.0, 100.0)

    def test_empty(self) -> None:
        """No values, no percentile."""
        assert percentile([], 0.99) is None


class TestAnalyze:
    """Latency counted from each request's scheduled time, not its actual send."""

    def test_late_send_counts_against_latency(self) -> None:
        """A request sent 40 ms late with a 1 ms answer has 41 ms latency from its schedule."""
        t0 = 1_000_000_000_000
        hits = [Hit(seq=i, sent_ns=t0 + i * 10_000_000, latency_ns=1_000_000, code=202, error="", url="u")
                for i in range(99)]
        hits.append(Hit(seq=99, sent_ns=t0 + 99 * 10_000_000 + 40_000_000, latency_ns=1_000_000, code=202,
                        error="", url="u"))
        step = analyze(hits, rate=100, duration_s=1.0)
        assert step.scheduled["max_ms"] == pytest.approx(41.0)
        assert step.service["max_ms"] == pytest.approx(1.0)
        assert step.max_send_lag_ms == pytest.approx(40.0)

    def test_errors_break_sustained(self) -> None:
        """One non-2xx answer makes a step unsustained, whatever its latency."""
        hits = [Hit(seq=0, sent_ns=0, latency_ns=1_000_000, code=202, error="", url="u"),
                Hit(seq=1, sent_ns=10_000_000, latency_ns=1_000_000, code=503, error="", url="u")]
        step = analyze(hits, rate=100, duration_s=0.02)
        assert step.errors == {"HTTP 503": 1}
        assert not step.sustained(50.0)


class TestResults:
    """The results structure and RESULTS.md."""

    def test_missing_field_is_refused(self) -> None:
        """A scenario row without 'met' does not pass the structure check."""
        row = _row()
        del row["met"]
        with pytest.raises(ValueError, match="met"):
            check(_results(fanout=row))

    def test_unknown_scenario_is_refused(self) -> None:
        """Only the issue's scenario names are accepted."""
        with pytest.raises(ValueError, match="unknown"):
            check(_results(other=_row()))

    def test_table_rows_in_issue_order(self) -> None:
        """The table lists scenarios in the issue's order, with the machine's other processes."""
        md = markdown(_results(fanout=_row(3500.0), ingest_single=_row(1200)), "x.json")
        assert md.index("`ingest_single`") < md.index("`fanout`")
        assert "| `fanout` | 3,500 | events/s | 2.000 | 0.500 | >= 1 | yes |" in md
        assert "java 1.5s" in md


    def test_cpu_line_carries_wal_per_event_when_measured(self) -> None:
        """A scenario whose CPU figures include WAL bytes per event shows them; one without does not."""
        cpu = {"events": 1000, "cpu_ms_per_1k": {"projector": 53.0}, "sum_ms_per_1k": 53.0,
               "bound_events_per_s": 37736}
        md = markdown(_results(fanout={**_row(), "cpu": {**cpu, "wal_bytes_per_event": 2345}},
                               ingest_single={**_row(), "cpu": cpu}), "x.json")
        fanout_line = next(line for line in md.splitlines() if line.startswith("- `fanout`"))
        single_line = next(line for line in md.splitlines() if line.startswith("- `ingest_single`"))
        assert fanout_line.endswith("; WAL 2,345 bytes per event")
        assert "WAL" not in single_line


class TestMergePartial:
    """An ``--only`` run replaces its own scenarios in the day's file and keeps the others."""

    def test_keeps_other_scenarios_and_marks_the_new_ones(self) -> None:
        """Scenarios not re-run keep their figures; re-run ones are replaced and carry the run that measured them."""
        from benchmarks.run import merge_partial

        day = _results(ingest_single=_row(1.0), fanout=_row(2.0))
        day["machine"]["run_id"] = "full-1"  # type: ignore[index]
        run = _results(fanout=_row(3.0))
        run["machine"].update(run_id="part-2", started_at="t2",  # type: ignore[attr-defined]
                              what_else_ran={"fanout": {"others_cpu_s": {}}})
        merged = merge_partial(day, run)  # type: ignore[arg-type]
        assert merged["scenarios"]["ingest_single"] == _row(1.0)
        assert merged["scenarios"]["fanout"] == {**_row(3.0), "measured_in_run": "part-2"}
        assert merged["machine"]["run_id"] == "full-1"
        assert merged["machine"]["partial_runs"] == [{"run_id": "part-2", "started_at": "t2", "scenarios": ["fanout"]}]
        assert set(merged["machine"]["what_else_ran"]) == {"ingest_single", "fanout"}
        check(merged)
        assert day["scenarios"]["fanout"] == _row(2.0)  # type: ignore[index]


class TestContactsImportBody:
    """contacts_import's CSV: the test's rows, every 97th phone malformed; the warm-up's all valid and distinct."""

    async def test_rows_and_malformed_phones(self) -> None:
        """n rows after the header, ceil(n / 97) of them with the malformed phone, in chunks of whole lines."""
        chunks = [c async for c in csv_body(1000)]
        lines = b"".join(chunks).decode().splitlines()
        assert lines[0] == "firstName,lastName,phoneNumber,email" and len(lines) == 1001
        assert all(c.endswith(b"\n") for c in chunks)
        assert sum(1 for x in lines[1:] if ",12ab," in x) == len(range(0, 1000, BAD_EVERY)) == 11
        warm = b"".join([c async for c in csv_body(100, offset=1000)]).decode().splitlines()[1:]
        assert len(warm) == 100 and not any(",12ab," in x for x in warm)
        assert not {x.split(",")[2] for x in warm} & {x.split(",")[2] for x in lines[1:]}
