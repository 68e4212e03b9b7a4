"""`helm lint --strict` and `helm template` over the values matrix times the supported Kubernetes versions; every
rendered object validated strictly (built-in kinds by kubernetes-validate, our CRs by the CRD, monitors by the
prometheus-operator models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.chart import (
    CHART_DIR,
    CI_VALUES_DIR,
    KUBE_VERSIONS,
    NAMESPACE,
    Obj,
    by_kind,
    helm,
    object_errors,
    render,
)
from voicechat_operator.spec import FORBIDDEN_EXTRA_ARGS

pytestmark = pytest.mark.helm

VALUES_MATRIX = sorted(CI_VALUES_DIR.glob("*-values.yaml"))
EXAMPLE_VALUES = sorted(CHART_DIR.glob("values-*.yaml"))
ALL_VALUES = VALUES_MATRIX + EXAMPLE_VALUES


def test_matrix_covers_the_documented_cases() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in VALUES_MATRIX}
    assert {"defaults", "monitoring", "instance", "custom-metrics", "namespaced"} <= names


@pytest.mark.parametrize("values", ALL_VALUES, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    done = helm("lint", "--strict", str(CHART_DIR), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", ALL_VALUES, ids=lambda p: p.name)
def test_every_rendered_object_is_valid(values: Path, kube_version: str) -> None:
    objs = render([values], kube_version)
    assert by_kind(objs, "Deployment"), "the operator Deployment is always rendered"
    errors = [e for obj in objs for e in object_errors(obj, kube_version)]
    assert not errors, "\n".join(errors)


def test_kube_version_below_129_is_refused() -> None:
    done = helm("template", "vc", str(CHART_DIR), "--kube-version", "1.28.0", check=False)
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr or "incompatible" in done.stderr


def _operator(objs: list[Obj]) -> Obj:
    (deployment,) = by_kind(objs, "Deployment")
    return deployment


def test_operator_pod_is_hardened_and_probed() -> None:
    deployment = _operator(render())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["command"] == ["voicechat-operator"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert port == 8080
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_namespaced_mode_grants_roles_in_each_watched_namespace() -> None:
    objs = render([CI_VALUES_DIR / "namespaced-values.yaml"])
    roles = by_kind(objs, "Role")
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["voice-a", "voice-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["voice-a", "voice-b"]
    for binding in bindings:
        (subject,) = binding["subjects"]
        assert subject["namespace"] == NAMESPACE
    assert not by_kind(objs, "ClusterRoleBinding") or all(
        not rule["resources"][0].startswith("voicechats")
        for cr in by_kind(objs, "ClusterRole")
        for rule in cr["rules"]
    )


def test_cluster_mode_binds_a_cluster_role() -> None:
    objs = render(extra=["--set", "operator.clusterWide=true"])
    assert by_kind(objs, "ClusterRole")
    assert by_kind(objs, "ClusterRoleBinding")
    assert not by_kind(objs, "Role")


@pytest.mark.parametrize(
    ("values", "kind"),
    [("monitoring-values.yaml", "PodMonitor"), ("servicemonitor-values.yaml", "ServiceMonitor")],
)
def test_monitoring_renders_monitors_for_session_and_llm(values: str, kind: str) -> None:
    objs = render([CI_VALUES_DIR / values])
    monitors = by_kind(objs, kind)
    # Named after what they scrape; the session's ServiceMonitor selects its cluster-internal metrics Service.
    assert {m["metadata"]["name"].rsplit("-", 1)[-1] for m in monitors} == {"session", "llm"}
    components = {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors}
    assert components == ({"session", "llm"} if kind == "PodMonitor" else {"metrics", "llm"})
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
    assert not by_kind(render(), kind)


def test_instance_and_helm_test_pod() -> None:
    objs = render([CI_VALUES_DIR / "instance-values.yaml"])
    (vc,) = by_kind(objs, "VoiceChat")
    assert vc["metadata"] == {**vc["metadata"], "name": "demo", "namespace": "default"}
    (test_pod,) = by_kind(objs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = test_pod["spec"]["containers"]
    # The Service the operator creates for NAME-session, on the CRD's default port.
    assert container["command"][-1] == "http://demo-session.default.svc:80/readyz"
    assert not by_kind(render(), "VoiceChat")
    assert not by_kind(render(), "Pod")


def render_notes(tmp_path: Path, values: Path) -> str:
    """NOTES.txt as `helm install` prints it (install needs a cluster; a copy of the chart renders it through tpl)."""
    chart = tmp_path / "voicechat"
    shutil.copytree(CHART_DIR, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes-under-test.txt")
    (chart / "templates" / "zz-notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes-under-test}\n"
        'data: {notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}}\n'
    )
    out = helm(
        "template",
        "vc",
        str(chart),
        "--namespace",
        NAMESPACE,
        "-f",
        str(values),
        "--show-only",
        "templates/zz-notes-under-test.yaml",
    ).stdout
    notes: str = yaml.safe_load(out)["data"]["notes"]
    return notes


def test_notes_say_what_to_do_next(tmp_path: Path) -> None:
    notes = render_notes(tmp_path, CI_VALUES_DIR / "instance-values.yaml")
    assert "kubectl -n voicechat-system rollout status deployment/vc-voicechat-operator" in notes
    assert "kubectl -n default get voicechat demo" in notes
    assert "port-forward svc/demo-session 8080:80" in notes
    assert "helm test vc" in notes
    assert "NVIDIA device plugin" in notes
    assert "helm show crds" in notes
    plain = render_notes(tmp_path / "plain", CI_VALUES_DIR / "defaults-values.yaml")
    assert "kind: VoiceChat" in plain
    assert "monitoring.podMonitor.enabled" in plain


def test_admission_policy_refuses_what_the_operator_refuses() -> None:
    objs = render()
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    # Bound to the watched namespaces (the release namespace by default).
    (selector,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector["values"] == [NAMESPACE]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["admission"]
    assert tuple(values["forbiddenExtraArgs"]) == FORBIDDEN_EXTRA_ARGS
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert json.dumps(list(FORBIDDEN_EXTRA_ARGS), separators=(",", ":")) in expressions
    assert "object.spec.llm.image" in expressions
    assert "object.spec.session.image" in expressions
    # Clusters before 1.30 have no GA ValidatingAdmissionPolicy: nothing is rendered there.
    assert not by_kind(render(kube_version="1.29.0"), "ValidatingAdmissionPolicy")
    assert not by_kind(render(extra=["--set", "admission.enabled=false"]), "ValidatingAdmissionPolicy")
