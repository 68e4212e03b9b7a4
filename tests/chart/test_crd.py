"""The chart ships the operator's CRD unchanged, and every VoiceChat the chart or the examples create is one
the API server (CRD schema) and the operator (its spec parser and cross-field rules) accept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import (
    CHART_CRD,
    CHART_DIR,
    CI_VALUES_DIR,
    MANIFESTS_DIR,
    OPERATOR_CRD,
    by_kind,
    crd_errors,
    helm,
    render,
)
from voicechat_operator.spec import parse_spec

pytestmark = pytest.mark.helm

EXAMPLES = sorted((MANIFESTS_DIR / "examples").glob("*.yaml"))
VOICECHAT_VALUES = [*sorted(CHART_DIR.glob("values-*.yaml")), *sorted(CI_VALUES_DIR.glob("*-values.yaml"))]


def test_chart_crd_is_the_operators_crd() -> None:
    assert CHART_CRD.read_bytes() == OPERATOR_CRD.read_bytes(), (
        "charts/voicechat/crds/ differs from the operator's CRD: "
        "cp operator/voicechat_operator/crds/*.yaml charts/voicechat/crds/ && make manifests"
    )
    assert sorted(p.name for p in CHART_CRD.parent.iterdir()) == sorted(
        p.name for p in OPERATOR_CRD.parent.glob("*.yaml")
    )


def test_helm_installs_exactly_that_crd() -> None:
    shown = [d for d in yaml.safe_load_all(helm("show", "crds", str(CHART_DIR)).stdout) if d]
    assert shown == [yaml.safe_load(OPERATOR_CRD.read_text())]


def assert_accepted(voicechat: dict[str, Any]) -> None:
    errors = crd_errors(voicechat)
    assert not errors, "\n".join(errors)
    # The operator's own parser adds the cross-field rules a CRD schema cannot express.
    parse_spec(voicechat["metadata"]["name"], voicechat["spec"])


def test_examples_exist_for_g5_and_cpu() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"voicechat-g5-xlarge.yaml", "voicechat-cpu.yaml"} <= names
    g5 = yaml.safe_load((MANIFESTS_DIR / "examples" / "voicechat-g5-xlarge.yaml").read_text())["spec"]["llm"]
    assert g5["engine"] == "vllm"
    assert g5["gpu"]["count"] == 1
    assert g5["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in g5["tolerations"]
    cpu = yaml.safe_load((MANIFESTS_DIR / "examples" / "voicechat-cpu.yaml").read_text())["spec"]["llm"]
    assert cpu["engine"] == "llamacpp"
    assert cpu["gpu"]["count"] == 0
    assert not cpu.get("tolerations")
    assert not cpu.get("nodeSelector")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_voicechats_are_accepted(example: Path) -> None:
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert docs
    for voicechat in docs:
        assert_accepted(voicechat)


@pytest.mark.parametrize("values", VOICECHAT_VALUES, ids=lambda p: p.name)
def test_rendered_voicechats_are_accepted(values: Path) -> None:
    for voicechat in by_kind(render([values]), "VoiceChat"):
        assert_accepted(voicechat)


def test_default_spec_is_the_design_minimal_voicechat() -> None:
    (voicechat,) = by_kind(render(extra=["--set", "voiceChat.enabled=true"]), "VoiceChat")
    assert voicechat["spec"] == {
        "llm": {
            "engine": "vllm",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "systemPrompt": "You are a helpful voice assistant.",
        },
        "session": {"minReplicas": 2, "maxReplicas": 10},
    }
    assert_accepted(voicechat)
