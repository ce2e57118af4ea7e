"""Open-loop HTTP load with vegeta: pre-signed target files, one attack per step, latency from schedule.

vegeta's constant pacer schedules hit ``i`` at ``began + i/rate`` and, with unbounded workers, sends it then
whatever earlier requests are doing (open loop). Its own latency starts when a worker actually sends, so a
generator that falls behind would hide queueing; :func:`analyze` therefore measures every request from its
*scheduled* time (``began + seq/rate``), which is what a provider sending at that rate would see.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import dataclasses
import io
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import LOCAL_BIN, Context, progress, summarize_ms

VEGETA = LOCAL_BIN / "vegeta"
#: Bound on vegeta's workers: far above what the rates here need in flight, but finite.
MAX_WORKERS = 4000
REQUEST_TIMEOUT_S = 10


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One pre-built request."""

    url: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"

    def json_line(self) -> bytes:
        """vegeta's JSON target format (body in base64, header values as lists)."""
        return orjson.dumps({
            "method": self.method, "url": self.url, "body": base64.b64encode(self.body).decode(),
            "header": {k: [v] for k, v in self.headers.items()},
        })


@dataclasses.dataclass
class Hit:
    """One result row of an attack."""

    seq: int
    sent_ns: int
    latency_ns: int
    code: int
    error: str
    url: str


@dataclasses.dataclass
class Step:
    """One attack at a fixed rate, summarised."""

    rate: int
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    achieved_rps: float
    scheduled: dict[str, float | None]
    service: dict[str, float | None]
    #: Worst delay between a request's scheduled time and its actual send (generator lag), ms.
    max_send_lag_ms: float
    began_ns: int
    hits: list[Hit] = dataclasses.field(repr=False, default_factory=list)

    def sustained(self, p99_limit_ms: float) -> bool:
        """Every request 2xx and p99 from scheduled time within the limit."""
        p99 = self.scheduled["p99_ms"]
        return self.sent > 0 and self.ok == self.sent and p99 is not None and p99 <= p99_limit_ms

    def brief(self) -> dict[str, Any]:
        """The figures kept in the results JSON."""
        return {
            "rate": self.rate, "duration_s": self.duration_s, "sent": self.sent, "ok": self.ok,
            "errors": self.errors, "achieved_rps": round(self.achieved_rps, 1), **self.scheduled,
            "service_p99_ms": self.service["p99_ms"], "max_send_lag_ms": round(self.max_send_lag_ms, 2),
        }


def write_targets(path: Path, targets: Iterable[Target]) -> int:
    """Write a target file; return how many targets."""
    n = 0
    with path.open("wb") as f:
        for t in targets:
            f.write(t.json_line())
            f.write(b"\n")
            n += 1
    return n


def _parse_csv(raw: bytes) -> list[Hit]:
    hits = []
    # vegeta's CSV: timestamp (ns), code, latency (ns), bytes out, bytes in, error, body, attack, seq, method,
    # url, headers
    for row in csv.reader(io.StringIO(raw.decode("utf-8", "replace"))):
        if len(row) < 11:
            continue
        hits.append(Hit(seq=int(row[8]), sent_ns=int(row[0]), latency_ns=int(row[2]), code=int(row[1]),
                        error=row[5], url=row[10]))
    return hits


def _error_kind(code: int, error: str) -> str:
    """A short class of failure: the status code, or the transport error without the request's URL."""
    if code:
        return f"HTTP {code}"
    if "Client.Timeout" in error or "deadline exceeded" in error:
        return "timeout"
    return error.split(": ")[-1][:80] or "no response"


def analyze(hits: Sequence[Hit], rate: int, duration_s: float) -> Step:
    """Summarise an attack, measuring latency from each request's scheduled time."""
    interval_ns = 1e9 / rate
    began = min((h.sent_ns - h.seq * interval_ns for h in hits), default=0.0)
    scheduled = []
    service = []
    max_lag = 0.0
    errors: dict[str, int] = {}
    ok = 0
    end = 0
    for h in hits:
        due = began + h.seq * interval_ns
        done = h.sent_ns + h.latency_ns
        end = max(end, done)
        max_lag = max(max_lag, h.sent_ns - due)
        scheduled.append((done - due) / 1e9)
        service.append(h.latency_ns / 1e9)
        if 200 <= h.code < 300:
            ok += 1
        else:
            key = _error_kind(h.code, h.error)
            errors[key] = errors.get(key, 0) + 1
    span = (end - began) / 1e9 if hits else 0.0
    return Step(rate=rate, duration_s=duration_s, sent=len(hits), ok=ok, errors=errors,
                achieved_rps=ok / span if span > 0 else 0.0, scheduled=summarize_ms(scheduled),
                service=summarize_ms(service), max_send_lag_ms=max_lag / 1e6, began_ns=int(began), hits=list(hits))


async def attack(ctx: Context, name: str, targets: Path, rate: int, duration_s: float) -> Step:
    """Run vegeta at ``rate``/s for ``duration_s`` (pinned to the generator CPU) and analyse its results."""
    out = ctx.workdir / f"{name}.bin"
    argv = [str(VEGETA), "attack", "-format=json", f"-targets={targets}", f"-rate={rate}/1s",
            f"-duration={duration_s}s", "-workers=64", f"-max-workers={MAX_WORKERS}",
            f"-timeout={REQUEST_TIMEOUT_S}s", "-max-body=0", "-keepalive=true", f"-output={out}"]
    if ctx.generator_cpu is not None:
        argv = ["taskset", "-c", str(ctx.generator_cpu), *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    ctx.spawned.append(proc.pid)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), duration_s + REQUEST_TIMEOUT_S + 30)
    except TimeoutError:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"vegeta attack failed: {err.decode()[-1000:]}")
    enc = await asyncio.create_subprocess_exec(str(VEGETA), "encode", "--to", "csv", str(out),
                                               stdout=asyncio.subprocess.PIPE)
    raw, _ = await asyncio.wait_for(enc.communicate(), 120)
    out.unlink(missing_ok=True)
    return analyze(_parse_csv(raw), rate, duration_s)


async def run_step(ctx: Context, name: str, rate: int, duration_s: float,
                   make_targets: Callable[[int], Iterable[Target]]) -> Step:
    """Pre-sign ``rate * duration`` fresh targets right before the attack, then attack."""
    path = ctx.workdir / f"{name}.targets"
    write_targets(path, make_targets(int(rate * duration_s) + rate))
    try:
        step = await attack(ctx, name, path, rate, duration_s)
    finally:
        path.unlink(missing_ok=True)
    progress(f"  {name}: {rate}/s x {duration_s:g}s -> ok {step.ok}/{step.sent}, "
             f"p50 {step.scheduled['p50_ms']} ms, p99 {step.scheduled['p99_ms']} ms (from schedule), "
             f"send lag max {step.max_send_lag_ms:.1f} ms{', errors ' + str(step.errors) if step.errors else ''}")
    return step


async def step_search(ctx: Context, name: str, rates: Sequence[int], duration_s: float,
                      make_targets: Callable[[int], Iterable[Target]], p99_limit_ms: float) -> tuple[int, list[Step]]:
    """Raise the rate step by step until a step is not sustained twice in a row (the machine is shared: one
    stall of a neighbour must not end the search); return the highest sustained rate and every step run."""
    best = 0
    steps = []
    # Warm-up, not counted: the first connections and first requests of a fresh process are not the steady state.
    await run_step(ctx, f"{name}-warmup", max(rates[0] // 2, 10), 1.0, make_targets)
    for rate in rates:
        step = await run_step(ctx, f"{name}-{rate}", rate, duration_s, make_targets)
        steps.append(step)
        if not step.sustained(p99_limit_ms):
            await asyncio.sleep(1.0)
            step = await run_step(ctx, f"{name}-{rate}-retry", rate, duration_s, make_targets)
            steps.append(step)
            if not step.sustained(p99_limit_ms):
                break
        best = rate
        await asyncio.sleep(1.0)  # let queues empty before the next step
    return best, steps


def capacity(steps: Sequence[Step]) -> float:
    """The highest completion rate of any step where every request got a 2xx (latency aside): throughput the
    service reached, reported next to the latency-bounded figure."""
    return max((s.achieved_rps for s in steps if s.sent and s.ok == s.sent), default=0.0)


def vegeta_version() -> str:
    """The vegeta binary in use (for the machine record)."""
    try:
        return subprocess.run([str(VEGETA), "-version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "missing"
