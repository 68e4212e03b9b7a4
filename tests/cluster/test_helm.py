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
from voicechat_operator import kinds

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "voicechat"
NS = "helm-voice"
RELEASE = "chat"
VALUES = [
    "--set", "voiceChat.enabled=true",
    "--set", f"operator.watchNamespaces={{{NS}}}",
]  # fmt: skip


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
    control_plane.admin.ensure_namespace(NS)
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
