"""The Grafana dashboard: valid JSON, shipped in a ConfigMap the sidecar picks up, and every metric it queries
is one the services define (taken from their prometheus_client collectors, not from a list typed here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from tests.support.chart import CHART_DIR, CI_VALUES_DIR, by_kind, render

pytestmark = pytest.mark.helm

DASHBOARD = CHART_DIR / "dashboards" / "voicechat.json"
# Sample names Prometheus stores for each metric type (prometheus_client family names drop `_total`).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}  # fmt: skip


def _collectors() -> Iterator[Collector]:
    from voicechat_llm.metrics import GateMetrics
    from voicechat_session import metrics as session_metrics

    yield from (v for v in vars(session_metrics).values() if isinstance(v, MetricWrapperBase))
    # The LLM gate keeps its metrics in a registry per service instance.
    yield GateMetrics(engine="llamacpp", model="test").registry


def defined_series() -> dict[str, str]:
    """Every series name the services can expose → its metric type."""
    series: dict[str, str] = {}
    for collector in _collectors():
        # A labelled metric has no samples until used: describe() still names it.
        families = collector.describe() if isinstance(collector, MetricWrapperBase) else collector.collect()
        for family in families:
            for suffix in SUFFIXES[family.type]:
                series[family.name + suffix] = family.type
    return series


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression (with Grafana variables) selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr):
        name = match.group(1)
        if name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def _template_query(var: dict[str, Any]) -> str | None:
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if var.get("type") != "query" or not isinstance(query, str):
        return None
    # label_values(metric, label) → metric; label_values(label) selects no metric.
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    return match.group(1) if match else query


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    exprs += [q for v in dashboard.get("templating", {}).get("list", []) if (q := _template_query(v))]
    return exprs


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def test_extractor_finds_metrics_and_skips_labels_and_functions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, pod) (rate(voicechat_x_bucket{code=~"a|b",namespace=~"$ns"}'
        "[$__rate_interval]))) / on (pod) group_left max(up) + voicechat_y offset 5m"
    )
    assert metric_names(expr) == {"voicechat_x_bucket", "up", "voicechat_y"}


def test_services_define_the_design_metrics() -> None:
    series = defined_series()
    assert series["voicechat_session_connect_seconds_bucket"] == "histogram"
    assert series["voicechat_session_active_sessions"] == "gauge"
    assert series["voicechat_session_errors_total"] == "counter"
    assert series["voicechat_llm_ready"] == "gauge"


def test_every_queried_metric_is_defined_in_the_services() -> None:
    series = defined_series()
    queried = {name for expr in dashboard_queries(load_dashboard()) for name in metric_names(expr)}
    assert not queried - series.keys(), (
        f"dashboard queries metrics no service defines: {queried - series.keys()}"
    )
    # The panels the issue asks for.
    for required in (
        "voicechat_session_connect_seconds_bucket",
        "voicechat_session_time_to_first_audio_seconds_bucket",
        "voicechat_session_active_sessions",
        "voicechat_llm_warmup_seconds",
        "voicechat_llm_ready",
        "voicechat_session_errors_total",
    ):
        assert required in queried, required


def test_histograms_are_read_through_quantiles_of_rates() -> None:
    for expr in dashboard_queries(load_dashboard()):
        if "_bucket" in expr:
            assert expr.startswith("histogram_quantile("), expr
            assert "sum by (le)" in expr, expr
            assert "rate(" in expr, expr
    exprs = dashboard_queries(load_dashboard())
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile},")
            and "voicechat_session_connect_seconds_bucket" in e
            for e in exprs
        ), quantile


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"]
    assert dashboard["title"] == "VoiceChat"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_configmap_ships_the_dashboard_with_the_sidecar_label() -> None:
    (configmap,) = by_kind(render([CI_VALUES_DIR / "monitoring-values.yaml"]), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["voicechat.json"]) == load_dashboard()
