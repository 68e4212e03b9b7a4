"""The checks the chart tests rely on reject what a real API server (or the values schema) would reject."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import (
    CHART_DIR,
    CI_VALUES_DIR,
    KUBE_VERSIONS,
    by_kind,
    crd_errors,
    dump_values,
    helm,
    monitoring_errors,
    object_errors,
    render,
)
from tests.support.kube_schema import minimal_voicechat

pytestmark = pytest.mark.helm

MINIMAL_VOICECHAT: dict[str, Any] = minimal_voicechat()


def test_design_minimal_voicechat_is_valid() -> None:
    assert crd_errors(MINIMAL_VOICECHAT) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "llm", "engine"), "tensorrt", "is not one of"),
        (("spec", "llm", "enginee"), "vllm", "Additional properties"),
        (("spec", "session", "minReplicas"), "2", "is not of type 'integer'"),
        (("spec", "session", "maxReplicas"), 0, "less than the minimum"),
        (("spec", "session", "autoscaling"), {"targetActiveSessionsPerPod": -1}, "less than the minimum"),
        (("spec", "llm", "gpu"), {"count": 1, "type": "a10g"}, "Additional properties"),
    ],
)
def test_crd_schema_rejects_bad_voicechats(path: tuple[str, ...], value: Any, expected: str) -> None:
    bad = copy.deepcopy(MINIMAL_VOICECHAT)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = crd_errors(bad)
    assert any(expected in e for e in errors), errors


def test_crd_schema_requires_the_session_range() -> None:
    bad = copy.deepcopy(MINIMAL_VOICECHAT)
    del bad["spec"]["session"]["maxReplicas"]
    assert any("'maxReplicas' is a required property" in e for e in crd_errors(bad))
    assert crd_errors({**MINIMAL_VOICECHAT, "apiVersion": "voicechat.io/v9"})


def test_kubernetes_validate_is_strict_on_built_in_kinds() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
    for version in KUBE_VERSIONS:
        assert object_errors(deployment, version) == []
        assert object_errors(bad, version), version


def test_monitor_check_rejects_unknown_fields_and_wrong_types() -> None:
    objs = render([CI_VALUES_DIR / "monitoring-values.yaml"])
    monitor = by_kind(objs, "PodMonitor")[0]
    assert monitoring_errors(monitor) == []
    unknown = copy.deepcopy(monitor)
    unknown["spec"]["podMetricsEndpoints"][0]["scrapeEvery"] = "15s"
    assert any("scrapeEvery: unknown field" in e for e in monitoring_errors(unknown))
    wrong = copy.deepcopy(monitor)
    wrong["spec"]["podMetricsEndpoints"] = "http"
    assert monitoring_errors(wrong)


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"operatorr": {}}, "operatorr"),
    "unknown nested key": ({"operator": {"replicas": 2}}, "replicas"),
    "wrong type": ({"operator": {"watchNamespaces": "default"}}, "watchNamespaces"),
    "bad enum": ({"operator": {"logLevel": "verbose"}}, "logLevel"),
    "bad namespace name": ({"operator": {"watchNamespaces": ["Voice_A"]}}, "watchNamespaces"),
    "bad quantity": ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    "bad digest": ({"operator": {"image": {"digest": "latest"}}}, "digest"),
    "spec not an object": ({"voiceChat": {"enabled": True, "spec": "vllm"}}, "spec"),
    "test path": ({"tests": {"path": "/"}}, "path"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects_bad_values(case: str, tmp_path: Path) -> None:
    values, mentions = BAD_VALUES[case]
    values_file = dump_values(tmp_path / "bad-values.yaml", values)
    for command in (["lint", "--strict", str(CHART_DIR)], ["template", "vc", str(CHART_DIR)]):
        done = helm(*command, "-f", str(values_file), check=False)
        assert done.returncode != 0, f"{case} accepted by helm {command[0]}"
        output = done.stdout + done.stderr
        assert "values don't meet the specifications of the schema" in output, output
        assert mentions in output, output


@pytest.mark.parametrize(
    "values",
    [
        {"monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
        {
            "monitoring": {"podMonitor": {"enabled": True}},
            "voiceChat": {"enabled": True, "spec": {"monitoring": {"podMonitor": True}}},
        },
    ],
    ids=["pod-and-service-monitors", "chart-and-instance-pod-monitors"],
)
def test_double_scraping_is_refused_with_a_clear_error(values: dict[str, Any], tmp_path: Path) -> None:
    done = helm(
        "template", "vc", str(CHART_DIR), "-f", str(dump_values(tmp_path / "v.yaml", values)), check=False
    )
    assert done.returncode != 0
    assert "scrape the same pods (every series twice): enable one of them" in done.stderr
