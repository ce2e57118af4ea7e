"""Fixtures of the packaging tests (helpers are in packcheck.py). They need neither Kafka nor Postgres."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import packcheck
import pytest
from packcheck import REPO, DefinedMetrics, Tools, run


@pytest.fixture(scope="session")
def tools() -> Tools:
    """The validators `make tooling` installed."""
    return Tools(Path(os.environ.get("QLARA_TOOLS_DIR", REPO / ".local" / "tools")).resolve())


@pytest.fixture(scope="session")
def defined_metrics() -> DefinedMetrics:
    """Every sample name and its labels, read from the prometheus_client registry after importing metrics.py."""
    return packcheck.defined_metrics()


@pytest.fixture(scope="session")
def promtool_rules_check(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[str]], str]:
    """Parse PromQL expressions with promtool (as recording rules); returns promtool's diagnostics, '' if valid."""

    def check(exprs: list[str]) -> str:
        rules = {"groups": [{"name": "expressions", "rules": [
            {"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        path = tmp_path_factory.mktemp("promql") / "rules.yml"
        path.write_text(json.dumps(rules))  # JSON is YAML
        result = run(tools.bin("promtool"), "check", "rules", path)
        return "" if result.returncode == 0 else result.stdout + result.stderr

    return check
