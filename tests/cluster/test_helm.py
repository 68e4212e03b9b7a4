"""The Helm chart on the real control plane: install (operator + a VoiceChat), upgrade, the `helm test` Pod
accepted by the API server, and uninstall leaving no VoiceChat and no child behind.

The operator runs as a process with the chart's settings (its Deployment's environment) and a token of the
chart's ServiceAccount; `helm uninstall` deletes that ServiceAccount, its RBAC and the Deployment before the
VoiceChat, exactly as in a cluster, so the operator loses its credentials mid-uninstall.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster_operator import OperatorProcess, assert_compact_quiet_logs, container_env
from tests.support.control_plane import ControlPlane, wait_for
from tests.support.kube_schema import minimal_voicechat
from voicechat_operator import kinds

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "voicechat"
NS = "helm-voice"
RELEASE = "chat"
OTHER_NS = "helm-elsewhere"
# The chart's defaults: a namespaced operator watching the release namespace only.
VALUES = ["--set", "voiceChat.enabled=true"]
# How the chart's README says to prepare the release namespace (Helm does not own it).
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def children(kube: Any, name: str) -> list[str]:
    """Every object in the namespace that names the VoiceChat as owner (or is one of its pods)."""
    found = []
    for kind in (
        *kinds.CHILD_KINDS[:-1],
        kinds.Kind("apps/v1", "ReplicaSet", "replicasets"),
        kinds.Kind("v1", "Pod", "pods"),
    ):
        for obj in kube.must_get(kind.path(NS))["items"]:
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name:
                found.append(f"{kind.kind}/{obj['metadata']['name']}")
    return found


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane, artifacts_dir: Path) -> Iterator[OperatorProcess]:
    control_plane.admin.ensure_namespace(NS, RESTRICTED)
    control_plane.helm("install", RELEASE, str(CHART), "-n", NS, *VALUES)
    deployments = [
        d
        for d in control_plane.admin.must_get(kinds.DEPLOYMENT.path(NS))["items"]
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    (deployment,) = deployments
    process = OperatorProcess(
        control_plane,
        artifacts_dir / "cluster",
        namespace=NS,
        service_account=deployment["spec"]["template"]["spec"]["serviceAccountName"],
        env=container_env(deployment),
        name="helm-operator",
    )
    process.start()
    yield process
    process.stop()  # after `helm uninstall` it has lost its credentials: its exit code says nothing


def test_install_reconciles_the_release_voicechat(
    control_plane: ControlPlane, release: OperatorProcess
) -> None:
    kube = control_plane.admin
    (vc,) = kube.must_get(kinds.VOICECHAT.path(NS))["items"]
    name = vc["metadata"]["name"]

    def ready() -> bool:
        obj = kube.get(kinds.VOICECHAT.path(NS, name)) or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in obj.get("status", {}).get("conditions", [])
        )

    wait_for(ready, what="the release's VoiceChat Ready", within=90)
    # Nothing may block its deletion on the operator, which `helm uninstall` removes first.
    assert not kube.must_get(kinds.VOICECHAT.path(NS, name))["metadata"].get("finalizers")
    assert release.env.get("VOICECHAT_OPERATOR_NAMESPACES") == NS  # the chart's settings, not the test's


def test_the_operator_ignores_other_namespaces_and_has_no_rights_there(
    control_plane: ControlPlane, release: OperatorProcess
) -> None:
    kube = control_plane.admin
    kube.ensure_namespace(OTHER_NS)
    kube.create(kinds.VOICECHAT.path(OTHER_NS), minimal_voicechat(OTHER_NS))
    # A barrier: an edit in the watched namespace, made after the other VoiceChat exists, is reconciled.
    (vc,) = kube.must_get(kinds.VOICECHAT.path(NS))["items"]
    name = vc["metadata"]["name"]
    kube.merge_patch(kinds.VOICECHAT.path(NS, name), {"spec": {"llm": {"systemPrompt": "Barrier."}}})
    wait_for(
        lambda: (
            (kube.get(kinds.CONFIG_MAP.path(NS, f"{name}-config")) or {})
            .get("data", {})
            .get("system-prompt.txt")
            == "Barrier."
        ),
        what="the barrier edit applied",
        within=20,
    )
    other = kube.must_get(kinds.VOICECHAT.path(OTHER_NS, "demo"))
    assert not other.get("status"), other.get("status")
    assert not kube.must_get(kinds.DEPLOYMENT.path(OTHER_NS))["items"]
    # RBAC: the operator's identity may write its own namespace and nothing in another one.
    for verb, resource in [
        ("create", "deployments"), ("patch", "configmaps"), ("get", "secrets"), ("create", "secrets"),
        ("list", "voicechats.voicechat.io"), ("patch", "voicechats.voicechat.io/status"),
    ]:  # fmt: skip
        args = ("auth", "can-i", verb, resource, "--as", release.username)
        assert control_plane.kubectl(*args, "-n", NS).stdout.strip() == "yes", (verb, resource)
        denied = control_plane.kubectl(*args, "-n", OTHER_NS, check=False)
        assert denied.stdout.strip() == "no", (verb, resource, denied.stdout)
    # Nor in kube-system, which a cluster-wide install could write to.
    denied = control_plane.kubectl(
        "auth", "can-i", "create", "deployments", "-n", "kube-system", "--as", release.username, check=False
    )
    assert denied.stdout.strip() == "no"
    kube.delete(kinds.VOICECHAT.path(OTHER_NS, "demo"))


def test_pods_are_admitted_under_restricted_pod_security(
    control_plane: ControlPlane, release: OperatorProcess
) -> None:
    kube = control_plane.admin
    # The label is enforced here: a pod without the restricted security context is refused...
    refused = control_plane.kubectl(
        "run", "plain", "-n", NS, "--image=busybox", "--dry-run=server", check=False
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr

    # ...while the operator's and the VoiceChat's pods were all created (and the helm test pod would be).
    def components() -> set[str]:
        pods = kube.must_get(f"/api/v1/namespaces/{NS}/pods")["items"]
        return {p["metadata"]["labels"].get("app.kubernetes.io/component", "") for p in pods}

    wait_for(lambda: {"operator", "llm", "session"} <= components(), what="operator, LLM and session pods")
    events = kube.must_get(f"/api/v1/namespaces/{NS}/events")["items"]
    assert not [e["message"] for e in events if "violates PodSecurity" in e.get("message", "")]


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ({"extraArgs": ["--trust-remote-code"]}, "spec.llm.extraArgs may not contain --trust-remote-code"),
        ({"extraArgs": ["--api-key=guess"]}, "spec.llm.extraArgs may not contain"),
        ({"image": "evil.example/llm:latest"}, "spec.llm.image must come from an allowed registry"),
    ],
)
def test_the_api_server_refuses_a_bad_voicechat(
    control_plane: ControlPlane, release: OperatorProcess, llm: dict[str, Any], message: str
) -> None:
    kube = control_plane.admin
    bad = minimal_voicechat(NS)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["llm"].update(llm)
    body = yaml.safe_dump(bad)

    def refused() -> str | None:
        # The policy takes effect once the API server has compiled it: retried until then.
        done = control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=body, check=False)
        return done.stderr if done.returncode != 0 else None

    error = wait_for(refused, what="the admission policy to refuse the VoiceChat", within=30)
    assert "ValidatingAdmissionPolicy" in error
    assert message in error
    assert kube.get(kinds.VOICECHAT.path(NS, "bad")) is None
    # The same VoiceChat with an allowed image and flags is accepted.
    good = minimal_voicechat(NS)
    good["metadata"]["name"] = "good"
    good["spec"]["llm"].update(
        {"image": "ghcr.io/voicechat/voicechat-llm:1", "extraArgs": ["--max-num-seqs", "8"]}
    )
    done = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump(good)
    )
    assert done.stdout.strip() == "voicechat.voicechat.io/good"


def test_upgrade_reaches_the_children(control_plane: ControlPlane, release: OperatorProcess) -> None:
    kube = control_plane.admin
    control_plane.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NS,
        *VALUES,
        "--set",
        "voiceChat.spec.llm.systemPrompt=Upgraded.",
    )
    (vc,) = kube.must_get(kinds.VOICECHAT.path(NS))["items"]
    config = f"{vc['metadata']['name']}-config"
    wait_for(
        lambda: (
            (kube.get(kinds.CONFIG_MAP.path(NS, config)) or {}).get("data", {}).get("system-prompt.txt")
            == "Upgraded."
        ),
        what="the upgraded prompt in the ConfigMap",
        within=20,
    )


def test_a_second_replica_with_a_lower_priority_stays_paused(
    control_plane: ControlPlane, release: OperatorProcess
) -> None:
    """kopf peering through the chart's KopfPeering object: only the higher-priority replica writes."""
    follower = OperatorProcess(
        control_plane,
        release.workdir,
        namespace=release.namespace,
        service_account=release.service_account,
        env={
            **release.env,
            "VOICECHAT_OPERATOR_PRIORITY": "-10",
            "VOICECHAT_OPERATOR_FIELD_MANAGER": "follower",
        },
        name="helm-operator-follower",
    )
    follower.start()
    try:
        # kopf starts paused and stays so while a peer with a higher priority is alive.
        peering = (
            f"/apis/kopf.dev/v1/namespaces/{NS}/kopfpeerings/{release.env['VOICECHAT_OPERATOR_PEERING_NAME']}"
        )
        wait_for(
            lambda: (
                sorted(
                    p["priority"] for p in (control_plane.admin.get(peering) or {}).get("status", {}).values()
                )
                == [-10, 0]
            ),
            what="both replicas in the peering object",
        )
        mark = len(control_plane.audit_events())
        control_plane.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            NS,
            *VALUES,
            "--set",
            "voiceChat.spec.llm.systemPrompt=Peered.",
        )
        kube = control_plane.admin
        (vc,) = kube.must_get(kinds.VOICECHAT.path(NS))["items"]
        config = f"{vc['metadata']['name']}-config"
        wait_for(
            lambda: (
                (kube.get(kinds.CONFIG_MAP.path(NS, config)) or {}).get("data", {}).get("system-prompt.txt")
                == "Peered."
            ),
            what="the edit applied by the leader",
            within=20,
        )
        managers = {
            event["requestURI"].split("fieldManager=")[1].split("&")[0]
            for event in control_plane.audit_events()[mark:]
            if event["user"]["username"] == release.username and "fieldManager=" in event["requestURI"]
        }
        assert managers == {"voicechat-operator"}
    finally:
        follower.stop()


def test_the_helm_test_pod_is_accepted(control_plane: ControlPlane, release: OperatorProcess) -> None:
    """The test kubelet runs no containers, so `helm test` itself cannot pass here; its Pod must be valid."""
    hooks = control_plane.helm("get", "hooks", RELEASE, "-n", NS).stdout
    (pod,) = [doc for doc in yaml.safe_load_all(hooks) if doc and doc["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    done = control_plane.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump(pod)
    )
    assert done.stdout.strip() == f"pod/{pod['metadata']['name']}"


def test_operator_logs_are_compact_and_quiet(release: OperatorProcess) -> None:
    assert_compact_quiet_logs(release)  # before the uninstall takes its credentials away


def test_uninstall_leaves_no_voicechat_and_no_child(
    control_plane: ControlPlane, release: OperatorProcess
) -> None:
    kube = control_plane.admin
    (vc,) = kube.must_get(kinds.VOICECHAT.path(NS))["items"]
    name = vc["metadata"]["name"]
    assert children(kube, name)
    control_plane.helm("uninstall", RELEASE, "-n", NS)
    wait_for(
        lambda: not kube.must_get(kinds.VOICECHAT.path(NS))["items"],
        what=f"no VoiceChat left (now {kube.must_get(kinds.VOICECHAT.path(NS))['items']})",
        within=30,
    )
    wait_for(lambda: not children(kube, name), what=f"no child left (now {children(kube, name)})", within=90)
