"""The chart's PodMonitors, ServiceMonitors and `helm test` pod reach the pods and Services the operator
actually creates (rendered by voicechat_operator.render for the chart's own VoiceChat)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.chart import CHART_DIR, CI_VALUES_DIR, Obj, by_kind, render
from voicechat_operator.render import Owner, render_children
from voicechat_operator.spec import SessionSpec, parse_spec
from voicechat_session.metrics import ACTIVE_SESSIONS

pytestmark = pytest.mark.helm


def chart_and_children(values: str) -> tuple[list[Obj], list[Obj]]:
    objs = render([CHART_DIR / values if values.startswith("values-") else CI_VALUES_DIR / values])
    (vc,) = by_kind(objs, "VoiceChat")
    meta = vc["metadata"]
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid="00000000-0000-0000-0000-000000000001")
    return objs, render_children(owner, parse_spec(meta["name"], vc["spec"]))


def component_of(obj: Obj) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, "the chart selects by labels only"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("values", ["custom-metrics-values.yaml", "values-eks-g5.yaml"])
def test_pod_monitors_select_the_operators_pods_and_ports(values: str) -> None:
    objs, children = chart_and_children(values)
    monitors = by_kind(objs, "PodMonitor")
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors} == {
        "llm",
        "session",
    }
    for monitor in monitors:
        pods = [
            d["spec"]["template"]
            for d in by_kind(children, "Deployment")
            if matches(monitor["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(pods) == 1, (
            f"{monitor['metadata']['name']} selects {len(pods)} of the operator's Deployments"
        )
        ports = {p["name"] for c in pods[0]["spec"]["containers"] for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"


def test_service_monitors_select_the_operators_services_and_ports() -> None:
    objs, children = chart_and_children("servicemonitor-values.yaml")
    monitors = by_kind(objs, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        services = [
            s
            for s in by_kind(children, "Service")
            if matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, (
            f"{monitor['metadata']['name']} selects {len(services)} of the operator's Services"
        )
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports


@pytest.mark.parametrize("values", ["instance-values.yaml", "values-eks-g5.yaml", "values-cpu.yaml"])
def test_helm_test_pod_asks_the_operators_session_service(values: str) -> None:
    objs, children = chart_and_children(values)
    (test_pod,) = by_kind(objs, "Pod")
    url = test_pod["spec"]["containers"][0]["command"][-1]
    (session_service,) = [s for s in by_kind(children, "Service") if component_of(s) == "session"]
    meta = session_service["metadata"]
    (port,) = [p["port"] for p in session_service["spec"]["ports"]]
    assert url == f"http://{meta['name']}.{meta['namespace']}.svc:{port}/readyz"
    assert test_pod["metadata"]["namespace"] == meta["namespace"]


def test_prometheus_adapter_serves_the_metric_the_operators_hpa_reads() -> None:
    adapter = yaml.safe_load((CHART_DIR / "examples" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    _, children = chart_and_children("custom-metrics-values.yaml")
    (hpa,) = by_kind(children, "HorizontalPodAutoscaler")
    (pods_metric,) = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert rule["name"]["as"] == pods_metric
    assert rule["seriesQuery"].startswith(f"{next(iter(ACTIVE_SESSIONS.describe())).name}{{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def _scaling_of(values: str, *extra: str) -> tuple[dict[str, Any], list[str]]:
    objs = render([CI_VALUES_DIR / values], extra=extra)
    (vc,) = by_kind(objs, "VoiceChat")
    meta = vc["metadata"]
    owner = Owner(name=meta["name"], namespace=meta["namespace"], uid="00000000-0000-0000-0000-000000000001")
    (hpa,) = by_kind(render_children(owner, parse_spec(meta["name"], vc["spec"])), "HorizontalPodAutoscaler")
    return vc["spec"]["session"].get("autoscaling", {}), [m["type"] for m in hpa["spec"]["metrics"]]


def test_active_sessions_autoscaling_where_the_cluster_serves_custom_metrics() -> None:
    served = ("--api-versions", "custom.metrics.k8s.io/v1beta1")
    scaling, metrics = _scaling_of("instance-values.yaml", *served)
    per_pod = SessionSpec.model_fields["max_sessions_per_pod"].default
    assert scaling == {"targetActiveSessionsPerPod": per_pod * 3 // 4}
    assert metrics == ["Resource", "Pods"]
    # Without the metric API, CPU only: a Pods metric the HPA cannot read would block every scale-down.
    scaling, metrics = _scaling_of("instance-values.yaml")
    assert scaling == {}
    assert metrics == ["Resource"]
    # The spec's own choice wins (custom-metrics-values.yaml sets 6 and CPU off); opting out keeps CPU only.
    assert _scaling_of("custom-metrics-values.yaml", *served)[1] == ["Pods"]
    off = ("--set", "voiceChat.activeSessionsAutoscaling=false")
    assert _scaling_of("instance-values.yaml", *served, *off) == ({}, ["Resource"])
