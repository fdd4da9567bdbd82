"""The PromQL of deploy/: the alerting rules' and the Grafana dashboard's expressions, the series names they read,
and the series the service declares (ingestion, publisher and routing metrics), for the tests that keep them in
step."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter, Gauge, Histogram

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "event-ingestion.json"

# Prometheus's own series for every target.
PROMETHEUS_SERIES = frozenset({"up"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (what is left once strings, label matchers, ranges and
    grouping clauses are removed, that is not a function call, a keyword or a number)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*(\()?", text):
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def declared_series() -> set[str]:
    """Every sample name the service's own metrics can export (a counter as `<name>_total`, a histogram as its
    `_bucket`, `_count` and `_sum`), read from the collectors in the apps' metrics modules."""
    from ingestion import metrics as ingestion_metrics
    from publisher import metrics as publisher_metrics
    from routing import metrics as routing_metrics

    names: set[str] = set()
    for module in (ingestion_metrics, publisher_metrics, routing_metrics):
        for value in vars(module).values():
            if isinstance(value, Counter | Gauge | Histogram):
                for family in value.describe():
                    names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names
