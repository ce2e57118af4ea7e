"""Optional py-spy profiles of the system under test (``--profile``): where its CPU goes during a step."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, ROOT, Context, progress

PY_SPY = BIN / "py-spy"


@dataclasses.dataclass
class Profile:
    """A running or finished py-spy recording."""

    raw: Path | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        """Fields to merge into a scenario's results (nothing when not profiled)."""
        return {"profile": self.summary} if self.summary else {}


def summarize(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Top functions by self and inclusive share of samples, from py-spy's collapsed ("raw") output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if frames:
            self_counts[frames[-1]] += n
        for f in set(frames):
            incl_counts[f] += n

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / total, 1)] for f, n in c.most_common(top)] if total else []

    # The trunk every sample shares (main, run_app, the event loop) says nothing; the service's own frames do.
    own = Counter({f: n for f, n in incl_counts.items() if "qlara_events/" in f and n < 0.9 * total})
    return {"samples": total, "self_pct": share(self_counts), "inclusive_qlara_pct": share(own)}


@contextlib.asynccontextmanager
async def maybe(ctx: Context, name: str, pid: int, seconds: float) -> AsyncIterator[Profile]:
    """Record ``pid`` with py-spy for ``seconds`` when the run was asked to profile; summarise afterwards."""
    prof = Profile()
    if not ctx.profile or not PY_SPY.exists():
        yield prof
        return
    prof.raw = ctx.workdir / f"profile-{name}.txt"
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
            "--format", "raw", "--nonblocking", "--output", str(prof.raw)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    ctx.spawned.append(proc.pid)
    try:
        yield prof
    finally:
        try:
            _, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
        except TimeoutError:
            proc.kill()
            err = b"timeout"
        if prof.raw.exists():
            prof.summary = summarize(prof.raw.read_text())
            # The whole collapsed profile stays for a closer look (git-ignored), e.g. in speedscope.
            keep = ROOT / ".local" / "profiles" / f"{ctx.run_id}-{name}.txt"
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(prof.raw.read_bytes())
            prof.summary["raw"] = str(keep.relative_to(ROOT))
            progress(f"  profile {name}: top self {prof.summary['self_pct'][:3]}")
        else:
            progress(f"  profile {name} failed: {err.decode()[-300:]}")
