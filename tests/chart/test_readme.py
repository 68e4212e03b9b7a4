"""The chart README's install steps name files that exist and objects the chart really creates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.chart import CHART_DIR, REPO_ROOT, by_kind, helm

pytestmark = pytest.mark.helm

README = CHART_DIR / "README.md"


@pytest.mark.parametrize("readme", [README, REPO_ROOT / "README.md"], ids=["chart", "root"])
def test_paths_in_the_readme_exist(readme: Path) -> None:
    text = readme.read_text()
    paths = set(
        re.findall(r"(?<![\w/.])((?:charts/voicechat|manifests|operator/examples)/[\w./-]*[\w/])", text)
    )
    assert "charts/voicechat/values-eks-g5.yaml" in paths
    missing = sorted(p for p in paths if not (REPO_ROOT / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_readme_commands_match_the_rendered_names() -> None:
    text = README.read_text()
    out = helm(
        "template",
        "voicechat",
        str(CHART_DIR),
        "-n",
        "voicechat-system",
        "-f",
        str(CHART_DIR / "values-eks-g5.yaml"),
    ).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    (deployment,) = by_kind(objs, "Deployment")
    (voicechat,) = by_kind(objs, "VoiceChat")
    assert f"rollout status deployment/{deployment['metadata']['name']}" in text
    vc_ns, vc_name = voicechat["metadata"]["namespace"], voicechat["metadata"]["name"]
    assert f"kubectl -n {vc_ns} get voicechat {vc_name} -w" in text
    assert f"kubectl -n {vc_ns} get svc {vc_name}-session" in text
    (test_pod,) = by_kind(objs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "helm test voicechat -n voicechat-system" in text
