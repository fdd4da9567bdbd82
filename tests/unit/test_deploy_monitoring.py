"""The operator's kit in deploy/: the alerting rules pass promtool (syntax and their unit tests, with the real
promtool that `make test` installs), the example Prometheus configuration loads them, and the rules and the
Grafana dashboard read only series the service exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import monitoring

PROMTOOL = "/usr/bin/promtool"


def _promtool(*args: str, cwd: Path) -> str:
    result = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_alert_rules_pass_promtool_check() -> None:
    output = _promtool("check", "rules", monitoring.ALERTS.name, cwd=monitoring.ALERTS.parent)
    assert f"SUCCESS: {len(monitoring.alert_rules())} rules found" in output


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    output = _promtool("test", "rules", monitoring.ALERT_TESTS.name, cwd=monitoring.ALERT_TESTS.parent)
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_alert_is_tested_firing() -> None:
    """Each alert has at least one promtool case where it fires (a case expecting silence alone proves nothing)."""
    fired = {
        case["alertname"]
        for test in yaml.safe_load(monitoring.ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in monitoring.alert_rules()} <= fired


def test_example_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    """The full check (rule files and credentials files included), with the token file where the example
    expects an operator's."""
    token = tmp_path / "token"
    token.write_text("a-token\n")
    config = monitoring.PROMETHEUS_CONFIG.read_text().replace("/etc/prometheus/ingest-metrics-token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(monitoring.ALERTS, tmp_path / "alerts.yml")
    output = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS" in output
    jobs = {job["job_name"] for job in yaml.safe_load(config)["scrape_configs"]}
    assert jobs == {"ingest-web", "ingest-worker"}  # the names the rules and the dashboard select


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{instance=~"$instance", le!="x"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.95, sum by (instance, le) (rate(b_bucket[5m]))) > 1e-9", {"b_bucket"}),
        ("x_total > 0 and on() (sum(rate(y_total[5m])) or on() vector(0)) == 0", {"x_total", "y_total"}),
        ('up{job=~"ingest-(web|worker)"} == 0', {"up"}),
        ("max(g) / ignoring(a) group_left(b) h offset 5m", {"g", "h"}),
    ],
)
def test_series_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert monitoring.series_names(expr) == names


def test_alert_rules_read_only_exported_series() -> None:
    known = monitoring.declared_series() | monitoring.PROMETHEUS_SERIES
    for rule in monitoring.alert_rules():
        names = monitoring.series_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: {sorted(names - known)} not exported"


def test_dashboard_reads_only_exported_series() -> None:
    known = monitoring.declared_series() | monitoring.PROMETHEUS_SERIES
    exprs = monitoring.dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = monitoring.series_names(expr)
        assert names, expr
        assert names <= known, f"{expr}: {sorted(names - known)} not exported"


def test_dashboard_covers_the_pipeline_per_node() -> None:
    board = monitoring.dashboard()
    panels = list(monitoring.dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    exprs = "\n".join(monitoring.dashboard_exprs())
    for needed in (
        "rate(ingestion_events_accepted_total",  # ingest rate
        "sum by (status) (rate(ingestion_request_duration_seconds_count",  # answers by status
        "sum by (reason) (rate(ingestion_events_rejected_total",  # refusals by reason
        "rate(publisher_events_published_total",  # publish rate
        "histogram_quantile(0.95, sum by (le) (rate(publisher_publish_latency_seconds_bucket",  # p95
        "ingestion_queue_depth",
        "publisher_circuit_breaker_state",
        "rate(publisher_events_dlq_total",
        "sum by (instance)",  # per node
    ):
        assert needed in exprs, needed
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "instance" in variables
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
