"""Helpers of the packaging tests: the repository, the validators `make tooling` installs, and the metrics.

These tests need neither Kafka nor Postgres. The validators live in ``.local/tools`` (override with
``QLARA_TOOLS_DIR``); a missing one fails the test with the command that installs it, never skips it.

No ``__init__.py`` here on purpose: with ``pythonpath = ["tests"]`` a package named ``packaging`` would
shadow the real ``packaging`` library for the whole test session.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # -- types-PyYAML is not a project dependency
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from qlara_events import metrics

REPO = Path(__file__).resolve().parents[2]

# Labels Prometheus attaches to every scraped series (deploy/prometheus/prometheus.yml adds `service`).
TARGET_LABELS = frozenset({"job", "instance", "service"})

# Suffixes of the exposed samples of each metric type (the Prometheus text exposition format).
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


@dataclass(frozen=True)
class Tools:
    """Paths of the validators installed by ``make tooling``."""

    root: Path

    @property
    def python(self) -> Path:
        """The tools venv's interpreter (it has the `dockerfile` parser and setuptools)."""
        return self.bin("python")

    def bin(self, name: str) -> Path:
        """A validator's executable; fails the test when ``make tooling`` has not installed it."""
        path = self.root / "bin" / name if name == "promtool" else self.root / "venv" / "bin" / name
        if not path.exists():
            pytest.fail(f"{path} is missing: run `make tooling` (make test does it)")
        return path


def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a validator; the completed process carries its exit code and output for the assertion message."""
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml_docs(path: Path) -> list[Any]:
    """Every YAML document of a file (empty ones dropped)."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


@dataclass(frozen=True)
class DefinedMetrics:
    """Sample names exposed by qlara_events.metrics, with the label names each one carries."""

    labels: dict[str, frozenset[str]]

    def problems(self, expr: str) -> list[str]:
        """What in a PromQL expression names a qlara metric or label that metrics.py does not define."""
        code = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals are not names
        names = re.findall(r"\bqlara_[a-zA-Z0-9_:]*", code)
        found: list[str] = []
        if not names:
            found.append(f"references no qlara_ metric: {expr!r}")
        known: set[str] = set(TARGET_LABELS)
        for name in names:
            if name not in self.labels:
                found.append(f"undefined metric {name}")
            else:
                known |= self.labels[name]
        for name, matchers in re.findall(r"\b(qlara_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}", code):
            allowed = self.labels.get(name, frozenset()) | TARGET_LABELS
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                if label not in allowed:
                    found.append(f"{name} has no label {label}")
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", code):
            for label in filter(None, (s.strip() for s in group.split(","))):
                if label not in known:
                    found.append(f"label {label} is on none of {sorted(set(names))}")
        return found


def defined_metrics() -> DefinedMetrics:
    """Every sample name and its labels, from the prometheus_client registry after importing metrics.py."""
    # Label names are not part of a family without samples, so they come from the collectors themselves.
    labelnames: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                labelnames[family.name] = tuple(value._labelnames)  # -- no public accessor for label names
    labels: dict[str, frozenset[str]] = {}
    for family in REGISTRY.collect():  # the registry is the authority on what /metrics exposes
        if family.name not in labelnames:
            continue
        base = frozenset(labelnames[family.name])
        for suffix in _SAMPLE_SUFFIXES[family.type]:
            labels[family.name + suffix] = base | ({"le"} if suffix == "_bucket" else frozenset())
    return DefinedMetrics(labels)
