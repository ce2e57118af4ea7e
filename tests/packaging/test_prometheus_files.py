"""deploy/prometheus: the scrape configuration and the alert rules, checked by promtool and against metrics.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from packcheck import REPO, DefinedMetrics, Tools, load_yaml_docs, run

PROM = REPO / "deploy" / "prometheus"
ROLES = ("ingress", "api", "projector", "dispatcher")


def _alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml_docs(PROM / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


class TestPromtool:
    def test_config_is_valid(self, tools: Tools) -> None:
        """promtool accepts prometheus.yml and the rule files it loads."""
        result = run(tools.bin("promtool"), "check", "config", PROM / "prometheus.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 rule files found" in result.stdout

    def test_rules_are_valid(self, tools: Tools) -> None:
        """promtool accepts alerts.yml."""
        result = run(tools.bin("promtool"), "check", "rules", PROM / "alerts.yml")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_alerts_fire_on_their_unit_test_series(self, tools: Tools) -> None:
        """promtool's rule unit tests (alerts.test.yml) pass: every alert fires when it should and only then."""
        result = run(tools.bin("promtool"), "test", "rules", "alerts.test.yml", cwd=PROM)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_rejects_a_broken_expression(self, promtool_rules_check: Callable[[list[str]], str]) -> None:
        """The PromQL syntax check is real: a malformed expression is reported."""
        assert promtool_rules_check(["sum(rate(qlara_http_requests_total[5m])"]) != ""


class TestAlertRules:
    def test_every_alert_uses_only_defined_metrics_and_labels(self, defined_metrics: DefinedMetrics) -> None:
        """Each alert expression names only metrics and labels defined in metrics.py."""
        problems = {r["alert"]: defined_metrics.problems(str(r["expr"])) for r in _alert_rules()}
        assert {k: v for k, v in problems.items() if v} == {}

    def test_required_signals_are_alerted_on(self) -> None:
        """Consumer lag, ingest errors, retry queue, dead letters, disabled webhooks and 5xx each have an alert."""
        exprs = " ".join(str(r["expr"]) for r in _alert_rules())
        for needle in ("qlara_consumer_lag_messages", 'outcome=~"unauthorized|rejected|unavailable"',
                       "qlara_webhook_retry_queue_depth", "qlara_webhook_dead_lettered", "qlara_webhook_disabled",
                       'qlara_http_requests_total{code=~"5.."}'):
            assert needle in exprs, needle

    def test_every_alert_has_severity_and_summary(self) -> None:
        """An alert without severity cannot be routed; without a summary it cannot be read."""
        for rule in _alert_rules():
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]

    def test_the_checker_rejects_an_undefined_metric_and_label(self, defined_metrics: DefinedMetrics) -> None:
        """The metric check can fail: an unknown metric, an unknown label and a foreign grouping label are found."""
        assert defined_metrics.problems("rate(qlara_http_requests_total[5m])") == []
        assert defined_metrics.problems("qlara_not_a_metric > 0") == ["undefined metric qlara_not_a_metric"]
        assert defined_metrics.problems('qlara_webhook_disabled{outcome="x"}') == [
            "qlara_webhook_disabled has no label outcome"]
        assert defined_metrics.problems("sum by (provider) (qlara_webhook_retry_queue_depth)") == [
            "label provider is on none of ['qlara_webhook_retry_queue_depth']"]
        assert defined_metrics.problems("up == 0") == ["references no qlara_ metric: 'up == 0'"]


class TestScrapeConfig:
    def test_every_compose_role_is_scraped(self) -> None:
        """prometheus.yml scrapes /metrics of each role's compose service on the container port."""
        (config,) = load_yaml_docs(PROM / "prometheus.yml")
        (job,) = config["scrape_configs"]
        targets = {t for sc in job["static_configs"] for t in sc["targets"]}
        assert targets == {f"{role}:8080" for role in ROLES}
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert {sc["labels"]["service"] for sc in job["static_configs"]} == set(ROLES)

    def test_rule_files_exist(self) -> None:
        """Every rule file prometheus.yml loads is in deploy/prometheus (mounted as a whole by compose)."""
        (config,) = load_yaml_docs(PROM / "prometheus.yml")
        assert config["rule_files"]
        for name in config["rule_files"]:
            assert Path(PROM / name).is_file(), name
