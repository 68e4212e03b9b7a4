"""The operator against the real control plane: the manifests' RBAC, server-side apply, garbage collection,
the controllers' Deployment status and the HPA. One operator process serves the whole module (like the
Deployment in manifests/, with the same settings and its ServiceAccount's token); tests run in file order
on one VoiceChat, as a user would: create, edit, break things, restart the operator, delete.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster_operator import OperatorProcess, assert_compact_quiet_logs, container_env
from tests.support.control_plane import ApiError, ControlPlane, wait_for
from tests.support.fake_llm import FakeLLM
from tests.support.fake_service import threaded_fake_llm
from tests.support.kube_schema import minimal_voicechat
from voicechat_common.localstack import free_port
from voicechat_operator import kinds
from voicechat_operator.render import CONFIG_HASH_ANNOTATION, Owner, render_children
from voicechat_operator.spec import parse_spec

NS = "voice"
NAME = "demo"
REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DEPLOYMENT = REPO_ROOT / "manifests" / "07-deployment-voicechat-operator.yaml"
CHILDREN = [
    (kinds.CONFIG_MAP, "demo-config"),
    (kinds.SERVICE, "demo-llm"),
    (kinds.NETWORK_POLICY, "demo-llm"),
    (kinds.DEPLOYMENT, "demo-llm"),
    (kinds.SERVICE, "demo-session"),
    (kinds.SERVICE, "demo-metrics"),
    (kinds.NETWORK_POLICY, "demo-session"),
    (kinds.DEPLOYMENT, "demo-session"),
    (kinds.HPA, "demo-session"),
    (kinds.PDB, "demo-session"),
]
LLM_CHECK_INTERVAL_S = 3
# What kopf retries a failed handler after (its default backoff): a spec edit must not wait for it.
KOPF_RETRY_S = 60
POD_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podmonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "PodMonitor",
            "plural": "podmonitors",
            "singular": "podmonitor",
            "listKind": "PodMonitorList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, artifacts_dir: Path) -> Iterator[OperatorProcess]:
    deployment = yaml.safe_load(OPERATOR_DEPLOYMENT.read_text())
    control_plane.admin.ensure_namespace(NS)
    process = OperatorProcess(
        control_plane,
        artifacts_dir / "cluster",
        namespace=deployment["metadata"]["namespace"],
        service_account=deployment["spec"]["template"]["spec"]["serviceAccountName"],
        # External LLM endpoints are re-checked every few seconds here (60 s by default), so a fixed Secret
        # shows in the status within a test's patience.
        env={
            **container_env(deployment),
            "VOICECHAT_OPERATOR_LLM_CHECK_INTERVAL_S": str(LLM_CHECK_INTERVAL_S),
        },
    )
    process.start()
    yield process
    assert process.stop() == 0, process.tail()


@pytest.fixture
def kube(control_plane: ControlPlane) -> Any:
    return control_plane.admin


def vc(kube: Any) -> dict[str, Any]:
    result: dict[str, Any] = kube.must_get(kinds.VOICECHAT.path(NS, NAME))
    return result


def condition(kube: Any, type_: str) -> dict[str, Any] | None:
    obj = kube.get(kinds.VOICECHAT.path(NS, NAME)) or {}
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def condition_is(kube: Any, type_: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
    cond = condition(kube, type_)
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None


def wait_ready(kube: Any, within: float = 60) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: condition_is(kube, "Ready", "True", "Ready"),
        what=f"VoiceChat Ready (now {condition(kube, 'Ready')})",
        within=within,
    )
    return result


def wait_settled(kube: Any, operator: OperatorProcess) -> None:
    """Ready for the current spec, and the operator done with what earlier steps set off.

    For a step that counts the operator's writes: child events queued in the operator when the previous
    step ended are still handled for a while (seconds on a loaded machine) and may write status.
    """
    wait_ready(kube, within=90)
    wait_for(
        lambda: vc(kube)["status"].get("observedGeneration") == vc(kube)["metadata"]["generation"],
        what="the current spec reconciled",
    )
    operator.wait_quiet()


def child(kube: Any, kind: kinds.Kind, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = kube.get(kind.path(NS, name))
    return result


def all_children(kube: Any) -> list[dict[str, Any]] | None:
    found = [child(kube, kind, name) for kind, name in CHILDREN]
    return [c for c in found if c is not None] if all(found) else None


def test_voicechat_becomes_ready_once_its_pods_are(operator: OperatorProcess, kube: Any) -> None:
    created = kube.create(kinds.VOICECHAT.path(NS), minimal_voicechat(NS))
    uid = created["metadata"]["uid"]
    children = wait_for(lambda: all_children(kube), what="every child")
    for obj in children:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (uid, True, True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voicechat-operator"
    # The real controllers: the HPA raises the session Deployment to minReplicas, the ReplicaSets make pods,
    # the scheduler binds them (the LLM pod needs a GPU), the test kubelet reports them ready.
    wait_ready(kube, within=90)  # Ready with one session pod; the HPA then raises the Deployment to 2
    wanted = "LLM: 1/1 LLM pods warm; sessions: 2/2 session pods ready"
    wait_for(lambda: (condition(kube, "Ready") or {}).get("message") == wanted, what=wanted, within=60)
    status = vc(kube)["status"]
    assert status["observedGeneration"] == 1
    assert status["sessions"] == {"readyReplicas": 2, "desiredReplicas": 2}
    assert status["endpoints"]["llm"] == "http://demo-llm.voice.svc:8000/v1"
    # The operator never owns the session replicas: the HPA (through the scale subresource) does.
    session = child(kube, kinds.DEPLOYMENT, "demo-session")
    assert session is not None
    assert session["spec"]["replicas"] == 2
    owners = {
        entry["manager"]: entry
        for entry in session["metadata"]["managedFields"]
        if "f:replicas" in json.dumps(entry.get("fieldsV1", {}).get("f:spec", {}))
    }
    assert "voicechat-operator" not in owners, owners
    pods = kube.must_get(f"/api/v1/namespaces/{NS}/pods")["items"]
    llm_pods = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "llm"]
    assert len(llm_pods) == 1
    assert llm_pods[0]["spec"]["nodeName"]
    assert llm_pods[0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kubectl_get_shows_the_printer_columns(
    control_plane: ControlPlane, operator: OperatorProcess
) -> None:
    text = control_plane.kubectl("get", "vc", "-n", NS, "-o", "wide").stdout
    (control_plane.workdir / "kubectl-get-vc.txt").write_text(text)  # quoted in the README
    out = text.splitlines()
    header, row = out[0].split(), out[1].split()
    assert header == [
        "NAME", "READY", "LLM-WARM", "SESSIONS-READY", "SESSIONS-DESIRED", "ENGINE", "MODEL", "REASON", "AGE"
    ]  # fmt: skip
    assert row[:8] == [NAME, "True", "True", "2", "2", "vllm", "meta-llama/Llama-3.1-8B-Instruct", "Ready"]


def test_spec_update_reaches_the_children_at_once(operator: OperatorProcess, kube: Any) -> None:
    hashes = {
        name: kube.must_get(kinds.DEPLOYMENT.path(NS, name))["spec"]["template"]["metadata"]["annotations"][
            CONFIG_HASH_ANNOTATION
        ]
        for name in ("demo-llm", "demo-session")
    }
    patch = {"spec": {"llm": {"systemPrompt": "Talk like a pirate."}, "session": {"maxReplicas": 12}}}
    kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), patch)
    wait_for(
        lambda: (
            (child(kube, kinds.CONFIG_MAP, "demo-config") or {})["data"]["system-prompt.txt"]
            == "Talk like a pirate."
        ),
        what="the new prompt in the ConfigMap",
        within=10,
    )
    wait_for(
        lambda: kube.must_get(kinds.HPA.path(NS, "demo-session"))["spec"]["maxReplicas"] == 12,
        what="HPA max 12",
    )
    for name, before in hashes.items():
        template = kube.must_get(kinds.DEPLOYMENT.path(NS, name))["spec"]["template"]
        assert template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != before  # the pods roll
    wait_for(lambda: vc(kube)["status"].get("observedGeneration") == 2, what="observedGeneration 2")
    wait_ready(kube, within=90)  # the rolled pods are ready again


def test_the_engine_api_key_is_generated_once_and_reaches_both_pods(
    operator: OperatorProcess, kube: Any
) -> None:
    secret = child(kube, kinds.SECRET, "demo-llm-api-key")
    assert secret is not None
    (ref,) = secret["metadata"]["ownerReferences"]
    assert ref["uid"] == vc(kube)["metadata"]["uid"]
    assert len(base64.b64decode(secret["data"]["api-key"])) >= 43
    for name, variable in (
        ("demo-llm", "VOICECHAT_LLM_API_KEY"),
        ("demo-session", "VOICECHAT_SESSION_LLM_API_KEY"),
    ):
        pod = kube.must_get(kinds.DEPLOYMENT.path(NS, name))["spec"]["template"]["spec"]
        (env,) = [e for e in pod["containers"][0]["env"] if e["name"] == variable]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "demo-llm-api-key", "key": "api-key"}
    auth_before = child(kube, kinds.SECRET, "demo-session-auth")
    # Two more reconciles of the spec: the key is neither rotated nor rewritten.
    for replicas in (13, 12):
        kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"session": {"maxReplicas": replicas}}})
        wait_for(
            lambda r=replicas: kube.must_get(kinds.HPA.path(NS, "demo-session"))["spec"]["maxReplicas"] == r,
            what=f"HPA max {replicas}",
        )
    after = child(kube, kinds.SECRET, "demo-llm-api-key")
    assert after is not None
    assert after["data"] == secret["data"]
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    # The access-token key (the app's backend mints with it) is generated once the same way.
    auth_after = child(kube, kinds.SECRET, "demo-session-auth")
    assert auth_before is not None
    assert auth_after is not None
    assert len(base64.b64decode(auth_after["data"]["key"])) >= 32
    assert auth_after["metadata"]["resourceVersion"] == auth_before["metadata"]["resourceVersion"]
    wait_ready(kube, within=90)


def test_a_deleted_child_comes_back(operator: OperatorProcess, kube: Any) -> None:
    old = kube.must_get(kinds.SERVICE.path(NS, "demo-llm"))
    kube.delete(kinds.SERVICE.path(NS, "demo-llm"))
    restored = wait_for(
        lambda: (
            (svc := child(kube, kinds.SERVICE, "demo-llm"))
            and svc["metadata"]["uid"] != old["metadata"]["uid"]
            and svc
        ),
        what="LLM Service restored",
    )
    assert [p["port"] for p in restored["spec"]["ports"]] == [8000, 8001]
    wait_ready(kube)


def test_a_changed_field_is_reverted(operator: OperatorProcess, kube: Any) -> None:
    kube.merge_patch(kinds.HPA.path(NS, "demo-session"), {"spec": {"maxReplicas": 99}})
    wait_for(
        lambda: kube.must_get(kinds.HPA.path(NS, "demo-session"))["spec"]["maxReplicas"] == 12,
        what="HPA max reverted",
    )
    wait_ready(kube)


@pytest.mark.parametrize(
    ("kind", "name", "path", "wanted"),
    [
        (kinds.SERVICE, "demo-session", "/spec/ports/0/port", [80]),
        (
            kinds.DEPLOYMENT,
            "demo-llm",
            "/spec/template/spec/containers/0/ports/0/containerPort",
            [8000, 8001],
        ),
    ],
)
def test_a_changed_port_is_restored(
    control_plane: ControlPlane,
    operator: OperatorProcess,
    kube: Any,
    kind: kinds.Kind,
    name: str,
    path: str,
    wanted: list[int],
) -> None:
    """Port lists are keyed by (port, protocol): a plain forced apply would add ours beside the changed entry
    and fail on the duplicate port name (HTTP 422), leaving the VoiceChat ApplyFailed for good."""
    control_plane.kubectl(
        "patch",
        kind.plural,
        name,
        "-n",
        NS,
        "--type=json",
        "-p",
        json.dumps([{"op": "replace", "path": path, "value": 8081}]),
    )

    def ports() -> list[int]:
        obj = child(kube, kind, name) or {}
        if kind is kinds.SERVICE:
            return [p["port"] for p in obj["spec"]["ports"]]
        return [p["containerPort"] for p in obj["spec"]["template"]["spec"]["containers"][0]["ports"]]

    wait_for(lambda: ports() == wanted, what=f"{name} ports back to {wanted} (now {ports()})", within=20)
    wait_ready(kube)
    assert condition_is(kube, "Ready", "True", "Ready")


def test_a_scaled_llm_deployment_is_scaled_back(
    control_plane: ControlPlane, operator: OperatorProcess, kube: Any
) -> None:
    control_plane.kubectl("scale", "deployment", "demo-llm", "-n", NS, "--replicas=3")
    wait_for(
        lambda: kube.must_get(kinds.DEPLOYMENT.path(NS, "demo-llm"))["spec"]["replicas"] == 1,
        what="LLM replicas 1",
    )
    wait_for(
        lambda: (
            len(
                [
                    p
                    for p in kube.must_get(f"/api/v1/namespaces/{NS}/pods")["items"]
                    if p["metadata"]["labels"].get("app.kubernetes.io/component") == "llm"
                ]
            )
            == 1
        ),
        what="one LLM pod again",
        within=60,
    )
    wait_ready(kube)


def test_a_spec_edit_after_a_failed_apply_is_applied_at_once(operator: OperatorProcess, kube: Any) -> None:
    # No PodMonitor CRD in this cluster yet: the apply fails and the status says why.
    kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"monitoring": {"podMonitor": True}}})
    failed = wait_for(lambda: condition_is(kube, "Ready", "False", "ApplyFailed"), what="ApplyFailed")
    assert "not served by this cluster" in failed["message"]
    # The user fixes something else meanwhile: it must not wait for a handler retry.
    kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"llm": {"systemPrompt": "Be brief."}}})
    wait_for(
        lambda: (
            (child(kube, kinds.CONFIG_MAP, "demo-config") or {})["data"]["system-prompt.txt"] == "Be brief."
        ),
        what="the edit applied",
        within=KOPF_RETRY_S / 4,
    )
    # The Prometheus Operator gets installed: the retry applies the PodMonitor and the VoiceChat is Ready again.
    kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", POD_MONITOR_CRD)
    wait_for(lambda: child(kube, kinds.POD_MONITOR, NAME), what="PodMonitor applied by a retry", within=90)
    wait_ready(kube, within=90)
    kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"monitoring": {"podMonitor": False}}})
    wait_for(lambda: child(kube, kinds.POD_MONITOR, NAME) is None, what="PodMonitor deleted")


def test_a_crd_upgrade_is_no_error_in_the_operator_log(operator: OperatorProcess, kube: Any) -> None:
    """Changing a CRD (as a Prometheus Operator upgrade does) re-initializes its storage: the operator's watch
    gets `429 storage is (re)initializing` and kopf retries. That is logged as a warning, not an error."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{POD_MONITOR_CRD['metadata']['name']}"

    def throttled() -> list[dict[str, Any]]:
        return [r for r in operator.records() if "storage is (re)initializing" in r["msg"]]

    for attempt in range(10):  # the 429 is a race with the storage: a few upgrades make it show
        column = {"name": f"Column{attempt}", "type": "string", "jsonPath": ".spec.jobLabel"}
        op = {"op": "add", "path": "/spec/versions/0/additionalPrinterColumns", "value": [column]}
        kube.json_patch(path, [op])
        try:
            wait_for(throttled, what="a throttled watch", within=3)
            break
        except AssertionError:
            continue
    records = throttled()
    assert records, "no CRD upgrade made the API server answer 429"
    assert {r["level"] for r in records} == {"warning"}, records


def test_an_invalid_spec_applies_nothing(
    control_plane: ControlPlane, operator: OperatorProcess, kube: Any
) -> None:
    wait_settled(kube, operator)
    mark = len(control_plane.audit_events())
    kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"session": {"maxReplicas": 1}}})
    try:
        invalid = wait_for(lambda: condition_is(kube, "Ready", "False", "InvalidSpec"), what="InvalidSpec")
        assert "maxReplicas (1) is less than session.minReplicas (2)" in invalid["message"]
        assert [w for w in operator.writes_since(mark) if not w.split()[1].startswith("voicechats")] == []
        assert kube.must_get(kinds.HPA.path(NS, "demo-session"))["spec"]["maxReplicas"] == 12
        # kopf posts events from a queue of its own, after the handler (and the status write) returned.
        wait_for(
            lambda: any(
                e["reason"] == "InvalidSpec" and e["involvedObject"]["name"] == NAME
                for e in kube.must_get(f"/api/v1/namespaces/{NS}/events")["items"]
            ),
            what="the InvalidSpec event",
        )
    finally:
        # The later tests need the valid spec back, whatever failed here.
        kube.merge_patch(kinds.VOICECHAT.path(NS, NAME), {"spec": {"session": {"maxReplicas": 12}}})
    # The schema rejects what it can before anything reaches the operator.
    body = minimal_voicechat(NS)
    body["metadata"]["name"] = "bad-engine"
    body["spec"]["llm"]["engine"] = "tgi"
    with pytest.raises(ApiError) as rejected:
        kube.create(kinds.VOICECHAT.path(NS), body)
    assert rejected.value.status == 422
    assert "engine" in str(rejected.value)
    wait_ready(kube)


def test_a_restart_writes_nothing_and_repairs_what_changed_meanwhile(
    control_plane: ControlPlane, operator: OperatorProcess, kube: Any
) -> None:
    wait_settled(kube, operator)  # else a status change while it is down is a (right) write on resume
    assert operator.stop() == 0, operator.tail()
    mark = len(control_plane.audit_events())
    operator.start()
    # The resume handler compares every child with what it would apply (the PDB is the last one).
    wait_for(
        lambda: operator.reads_since(mark, "poddisruptionbudgets", "demo-session"), what="children compared"
    )
    wait_for(lambda: operator.reads_since(mark, "deployments", "demo-session") >= 2, what="status observed")
    assert operator.writes_since(mark) == []

    assert operator.stop() == 0, operator.tail()
    kube.delete(kinds.PDB.path(NS, "demo-session"))
    mark = len(control_plane.audit_events())
    operator.start()
    wait_for(lambda: child(kube, kinds.PDB, "demo-session"), what="PDB restored on resume")
    assert operator.writes_since(mark) == ["patch poddisruptionbudgets/demo-session"]

    # A VoiceChat that an earlier operator (with a kopf timer) marked with its finalizer is released.
    assert operator.stop() == 0, operator.tail()
    kube.merge_patch(
        kinds.VOICECHAT.path(NS, NAME), {"metadata": {"finalizers": ["voicechat.io/kopf-timer"]}}
    )
    operator.start()
    wait_for(
        lambda: not vc(kube)["metadata"].get("finalizers"),
        what="the old kopf-timer finalizer removed",
        within=30,
    )


def _named_condition(kube: Any, name: str, type_: str) -> dict[str, Any]:
    obj = kube.get(kinds.VOICECHAT.path(NS, name)) or {}
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def _wait_condition(kube: Any, name: str, type_: str, status: str, reason: str, within: float = 60) -> Any:
    return wait_for(
        lambda: (
            (cond := _named_condition(kube, name, type_)).get("status") == status
            and cond.get("reason") == reason
            and cond
        ),
        what=f"{name} {type_}={status} ({reason}); now {_named_condition(kube, name, type_)}",
        within=within,
    )


def _secret(name: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"api-key": key},
    }


def _hosted_voicechat(
    name: str, llm: dict[str, Any], session: dict[str, Any] | None = None
) -> dict[str, Any]:
    body = minimal_voicechat(NS)
    body["metadata"]["name"] = name
    body["spec"] = {"llm": llm, "session": {"minReplicas": 1, "maxReplicas": 2, **(session or {})}}
    return body


def _delete_voicechat(kube: Any, name: str) -> None:
    kube.delete(kinds.VOICECHAT.path(NS, name))
    wait_for(lambda: kube.get(kinds.VOICECHAT.path(NS, name)) is None, what=f"{name} deleted", within=30)


def test_an_external_llm_voicechat_is_ready_without_llm_pods(operator: OperatorProcess, kube: Any) -> None:
    """Against a local OpenAI-compatible stand-in with an API key; then to llama.cpp and back."""
    name = "ext"
    with threaded_fake_llm(FakeLLM(api_key="sk-cluster-test")) as url:
        kube.create(f"/api/v1/namespaces/{NS}/secrets", _secret("ext-provider", "sk-cluster-test"))
        llm = {
            "engine": "external",
            "url": url,
            "model": "fake-model",
            "apiKeySecret": {"name": "ext-provider"},
        }
        kube.create(kinds.VOICECHAT.path(NS), _hosted_voicechat(name, llm))
        ready = _wait_condition(kube, name, "Ready", "True", "Ready", within=90)
        assert "HTTP 200" in ready["message"]
        status = kube.must_get(kinds.VOICECHAT.path(NS, name))["status"]
        assert _named_condition(kube, name, "LLMReady")["reason"] == "EndpointReachable"
        assert isinstance(status["llm"]["checkLatencyMs"], int)
        assert status["endpoints"]["llm"] == url
        assert "warmup" not in status["endpoints"]
        for kind in (kinds.DEPLOYMENT, kinds.SERVICE, kinds.NETWORK_POLICY):
            assert child(kube, kind, "ext-llm") is None
        assert child(kube, kinds.SECRET, "ext-llm-api-key") is None  # never generated for a provider
        pod = kube.must_get(kinds.DEPLOYMENT.path(NS, "ext-session"))["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["VOICECHAT_SESSION_LLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ext-provider"
        config = kube.must_get(kinds.CONFIG_MAP.path(NS, "ext-config"))["data"]
        assert (config["VOICECHAT_SESSION_LLM_PROVIDER"], config["VOICECHAT_SESSION_LLM_URL"]) == (
            "openai",
            url,
        )
        assert "VOICECHAT_SESSION_LLM_WARMUP_URL" not in config
        policy = kube.must_get(kinds.NETWORK_POLICY.path(NS, "ext-session"))
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert any(p["port"] == port for rule in policy["spec"]["egress"] for p in rule["ports"])

        # To an in-cluster engine: its LLM objects appear (and LLMReady follows the LLM Deployment) ...
        in_cluster = {"engine": "llamacpp", "url": None, "apiKeySecret": None, "gpu": {"count": 0}}
        kube.merge_patch(kinds.VOICECHAT.path(NS, name), {"spec": {"llm": in_cluster}})
        wait_for(lambda: child(kube, kinds.DEPLOYMENT, "ext-llm"), what="ext-llm Deployment", within=30)
        warm = _wait_condition(kube, name, "LLMReady", "True", "AllReplicasWarm", within=90)
        assert "LLM pods warm" in warm["message"]
        # ... and back: they go again.
        kube.merge_patch(kinds.VOICECHAT.path(NS, name), {"spec": {"llm": llm}})
        wait_for(
            lambda: all(
                child(kube, k, "ext-llm") is None
                for k in (kinds.DEPLOYMENT, kinds.SERVICE, kinds.NETWORK_POLICY)
            ),
            what="ext-llm Deployment, Service and NetworkPolicy deleted",
            within=30,
        )
        _wait_condition(kube, name, "LLMReady", "True", "EndpointReachable")
    _delete_voicechat(kube, name)
    kube.delete(f"/api/v1/namespaces/{NS}/secrets/ext-provider")


def test_bad_external_config_gives_a_clear_condition(operator: OperatorProcess, kube: Any) -> None:
    name = "ext-bad"
    with threaded_fake_llm(FakeLLM(api_key="sk-right")) as url:
        llm = {
            "engine": "external",
            "url": url,
            "model": "fake-model",
            "apiKeySecret": {"name": "ext-bad-key"},
        }
        kube.create(kinds.VOICECHAT.path(NS), _hosted_voicechat(name, llm))
        missing = _wait_condition(kube, name, "LLMReady", "False", "SecretMissing")
        assert "Secret ext-bad-key does not exist" in missing["message"]
        assert _named_condition(kube, name, "Ready")["reason"] == "LLMNotReady"
        # The operator does not watch Secrets: its periodic check sees the new one.
        kube.create(f"/api/v1/namespaces/{NS}/secrets", _secret("ext-bad-key", "sk-wrong"))
        refused = _wait_condition(kube, name, "LLMReady", "False", "Unauthorized", within=30)
        assert "HTTP 401" in refused["message"]
        kube.merge_patch(
            f"/api/v1/namespaces/{NS}/secrets/ext-bad-key", {"stringData": {"api-key": "sk-right"}}
        )
        _wait_condition(kube, name, "LLMReady", "True", "EndpointReachable", within=30)
    # The server is gone: the next check says so, and the operator keeps running.
    _wait_condition(kube, name, "LLMReady", "False", "Unreachable", within=30)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    kube.merge_patch(kinds.VOICECHAT.path(NS, name), {"spec": {"llm": {"url": dead}}})
    unreachable = wait_for(
        lambda: dead in (cond := _named_condition(kube, name, "LLMReady")).get("message", "") and cond,
        what="the new URL checked",
        within=30,
    )
    assert unreachable["reason"] == "Unreachable"
    assert operator.process is not None
    assert operator.process.poll() is None
    _delete_voicechat(kube, name)
    kube.delete(f"/api/v1/namespaces/{NS}/secrets/ext-bad-key")


def test_a_bedrock_voicechat_uses_its_service_account_and_the_session_pods_check(
    operator: OperatorProcess, kube: Any
) -> None:
    """Rendering and status on the control plane. The test kubelet runs no containers, so the session pods'
    own Bedrock check (their readiness) is what the kubelet reports, not a call to a Bedrock stand-in."""
    name = "brock"
    role = "arn:aws:iam::111122223333:role/voicechat-bedrock"
    llm = {"engine": "bedrock", "model": "meta.llama3-1-8b-instruct-v1:0", "bedrock": {"region": "us-east-1"}}
    session = {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role}}}
    kube.create(kinds.VOICECHAT.path(NS), _hosted_voicechat(name, llm, session))
    _wait_condition(kube, name, "Ready", "True", "Ready", within=90)
    llm_ready = _named_condition(kube, name, "LLMReady")
    assert llm_ready["reason"] == "SessionPodsReachBedrock"
    assert "session pods" in llm_ready["message"]
    account = kube.must_get(kinds.SERVICE_ACCOUNT.path(NS, "brock-session"))
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
    assert account["automountServiceAccountToken"] is False
    pods = kube.must_get(f"/api/v1/namespaces/{NS}/pods?labelSelector=app.kubernetes.io/instance%3Dbrock")
    assert pods["items"]
    for pod in pods["items"]:
        assert pod["spec"]["serviceAccountName"] == "brock-session"
        env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert not any(v.startswith("AWS_SECRET") or v.startswith("AWS_ACCESS") for v in env)
    config = kube.must_get(kinds.CONFIG_MAP.path(NS, "brock-config"))["data"]
    assert config["VOICECHAT_SESSION_LLM_PROVIDER"] == "bedrock"
    assert config["VOICECHAT_SESSION_BEDROCK_REGION"] == "us-east-1"
    assert child(kube, kinds.DEPLOYMENT, "brock-llm") is None
    _delete_voicechat(kube, name)


@pytest.mark.parametrize(
    ("llm", "needle"),
    [
        ({"engine": "external", "model": "m"}, "llm.engine external needs llm.url and llm.model"),
        ({"engine": "bedrock", "model": "m"}, "llm.engine bedrock needs llm.model and llm.bedrock.region"),
        ({"engine": "bedrock", "bedrock": {"region": "us-east-1"}}, "needs llm.model"),
    ],
)
def test_the_api_server_refuses_incomplete_hosted_engines(
    operator: OperatorProcess, kube: Any, llm: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ApiError) as err:
        kube.create(kinds.VOICECHAT.path(NS), _hosted_voicechat("refused", llm))
    assert err.value.status == 422
    assert needle in str(err.value)


EXAMPLES = sorted((REPO_ROOT / "operator" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_reconciles_into_children_the_server_accepts(
    operator: OperatorProcess, kube: Any, path: Path
) -> None:
    body = copy.deepcopy(yaml.safe_load(path.read_text()))
    namespace = f"ex-{path.stem.removeprefix('voicechat-')}"
    kube.ensure_namespace(namespace)
    body["metadata"]["namespace"] = namespace
    name = body["metadata"]["name"]
    owner = Owner(name=name, namespace=namespace, uid="-")
    expected = [
        (kinds.kind_of(obj), obj["metadata"]["name"])
        for obj in render_children(owner, parse_spec(name, body["spec"]))
    ]
    kube.create(kinds.VOICECHAT.path(namespace), body)
    wait_for(
        lambda: all(kube.get(kind.path(namespace, n)) for kind, n in expected),
        what=f"children of {path.name}",
    )
    cond = wait_for(
        lambda: next(
            (
                c
                for c in (kube.get(kinds.VOICECHAT.path(namespace, name)) or {})
                .get("status", {})
                .get("conditions", [])
                if c["type"] == "Ready"
            ),
            None,
        ),
        what="a Ready condition",
    )
    assert cond["reason"] not in ("ApplyFailed", "InvalidSpec"), cond


def test_deleting_the_voicechat_collects_every_child(
    control_plane: ControlPlane, operator: OperatorProcess, kube: Any
) -> None:
    kube.delete(kinds.VOICECHAT.path(NS, NAME))
    wait_for(
        lambda: kube.get(kinds.VOICECHAT.path(NS, NAME)) is None,
        what="VoiceChat gone (no finalizer)",
        within=30,
    )
    # The garbage collector (kube-controller-manager) follows the owner references.
    wait_for(
        lambda: all(child(kube, kind, name) is None for kind, name in CHILDREN),
        what="children collected",
        within=90,
    )
    wait_for(lambda: not kube.must_get(f"/api/v1/namespaces/{NS}/pods")["items"], what="pods gone", within=90)


def test_operator_logs_are_compact_and_quiet(operator: OperatorProcess) -> None:
    assert_compact_quiet_logs(operator)
