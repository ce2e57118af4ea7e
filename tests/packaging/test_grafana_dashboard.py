"""deploy/grafana: the dashboard JSON and its provisioning, checked against metrics.py and by promtool's parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from packcheck import REPO, DefinedMetrics, load_yaml_docs

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "qlara-events.json"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


class TestDashboard:
    def test_is_a_dashboard_document(self) -> None:
        """The file is JSON with a stable uid, a title and panels that each query something."""
        dash = _dashboard()
        assert dash["uid"] == "qlara-events" and dash["title"]
        assert len(_panels()) >= 10
        assert all(p["targets"] and p["title"] for p in _panels())
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))

    def test_panels_fit_the_grid(self) -> None:
        """Grafana's grid is 24 columns wide; no panel overlaps another."""
        cells: set[tuple[int, int]] = set()
        for p in _dashboard()["panels"]:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine

    def test_every_expression_uses_only_defined_metrics_and_labels(self, defined_metrics: DefinedMetrics) -> None:
        """Each PromQL expression names only metrics and labels defined in metrics.py."""
        problems = {e: defined_metrics.problems(e) for e in _exprs()}
        assert {k: v for k, v in problems.items() if v} == {}

    def test_every_expression_parses(self, promtool_rules_check: Callable[[list[str]], str]) -> None:
        """promtool parses every expression once Grafana's $__rate_interval is given a value."""
        exprs = [e.replace("$__rate_interval", "1m") for e in _exprs()]
        assert promtool_rules_check(exprs) == ""

    def test_key_signals_have_panels(self) -> None:
        """Lag, ingest outcomes, 5xx, retry queue, dead letters and disabled webhooks are on the dashboard."""
        text = " ".join(_exprs())
        for metric in ("qlara_consumer_lag_messages", "qlara_ingest_requests_total", "qlara_http_requests_total",
                       "qlara_webhook_retry_queue_depth", "qlara_webhook_dead_lettered", "qlara_webhook_disabled",
                       "qlara_projector_events_total", "qlara_webhook_attempts_total"):
            assert metric in text, metric

    def test_panels_use_the_datasource_variable(self) -> None:
        """Every panel queries through the ${datasource} variable, whose default is the provisioned datasource."""
        (var,) = [v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource"]
        assert var["type"] == "datasource" and var["query"] == "prometheus"
        (doc,) = load_yaml_docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
        (provisioned,) = doc["datasources"]
        assert var["current"]["value"] == provisioned["uid"]
        for p in _panels():
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


class TestProvisioning:
    def test_datasource_points_at_the_compose_prometheus(self) -> None:
        """The provisioned datasource is the compose `prometheus` service."""
        (doc,) = load_yaml_docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
        (ds,) = doc["datasources"]
        assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"]

    def test_dashboard_provider_reads_the_mounted_folder(self) -> None:
        """The dashboard provider's path is where docker-compose.yml mounts deploy/grafana/dashboards."""
        (doc,) = load_yaml_docs(GRAFANA / "provisioning" / "dashboards" / "qlara-events.yml")
        (provider,) = doc["providers"]
        (compose,) = load_yaml_docs(REPO / "docker-compose.yml")
        mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
        assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
        assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
