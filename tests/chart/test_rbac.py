"""The chart grants the operator exactly what its code needs: voicechat_operator.rbac derives the rules from the
calls the operator makes and what kopf does; nothing required is missing and nothing more is granted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.chart import CI_VALUES_DIR, NAMESPACE, Obj, by_kind, helm, render, template_args
from voicechat_operator import rbac
from voicechat_operator.settings import OperatorSettings

pytestmark = pytest.mark.helm

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        assert not rule.get("resourceNames"), rule
        assert not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def assert_exactly(granted: set[Grant], required: set[Grant], where: str) -> None:
    assert not {g for g in granted if "*" in g}, f"{where}: wildcards grant more than the operator uses"
    assert not required - granted, f"{where}: missing {sorted(required - granted)}"
    assert not granted - required, (
        f"{where}: grants more than the operator uses: {sorted(granted - required)}"
    )


def assert_bound(objs: list[Obj], role: Obj, binding_kind: str) -> None:
    (sa,) = by_kind(objs, "ServiceAccount")
    (deployment,) = by_kind(objs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    bindings = [
        b
        for b in by_kind(objs, binding_kind)
        if b["roleRef"]["name"] == role["metadata"]["name"]
        and b["metadata"].get("namespace") == role["metadata"].get("namespace")
    ]
    assert len(bindings) == 1, f"{role['kind']} {role['metadata']['name']} bound {len(bindings)} times"
    assert bindings[0]["roleRef"]["kind"] == role["kind"]
    assert bindings[0]["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_required_rules_are_derived_from_the_operator() -> None:
    required = grants(rbac.required_rules())
    # Spot checks that the derivation covers both the operator's own calls and kopf's.
    assert ("apps", "deployments", "patch") in required
    assert ("voicechat.io", "voicechats/status", "patch") in required
    assert ("", "events", "create") in required


CLUSTER_WIDE = ["--set", "operator.clusterWide=true"]


def test_by_default_the_operator_watches_and_may_write_its_release_namespace_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objs = render()
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert_exactly(grants(role["rules"]), grants(rbac.namespaced_rules()), "Role in the release namespace")
    assert_bound(objs, role, "RoleBinding")
    # Cluster-wide, only the read-only rules kopf's scanning needs: no write outside the release namespace.
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert_exactly(grants(cluster_role["rules"]), grants(rbac.cluster_rules()), "ClusterRole (default)")
    assert not {g for g in grants(cluster_role["rules"]) if g[2] in {"create", "update", "delete"}}
    assert _operator_settings(objs, monkeypatch).namespaces == [NAMESPACE]
    (peering,) = by_kind(objs, "KopfPeering")
    assert peering["metadata"]["namespace"] == NAMESPACE


def test_cluster_wide_and_a_namespace_list_together_are_refused() -> None:
    done = helm(*template_args(), *CLUSTER_WIDE, "--set", "operator.watchNamespaces={a}", check=False)
    assert done.returncode != 0
    assert "leave operator.watchNamespaces empty" in done.stderr


def test_watching_all_namespaces_grants_exactly_the_required_rules_cluster_wide() -> None:
    objs = render(extra=CLUSTER_WIDE)
    (role,) = by_kind(objs, "ClusterRole")
    assert not by_kind(objs, "Role")
    assert_exactly(grants(role["rules"]), grants(rbac.required_rules()), "ClusterRole")
    assert_bound(objs, role, "ClusterRoleBinding")


def test_watching_some_namespaces_grants_namespaced_rules_there_only() -> None:
    objs = render([CI_VALUES_DIR / "namespaced-values.yaml"])
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["voice-a", "voice-b"]
    for role in roles:
        assert_exactly(
            grants(role["rules"]), grants(rbac.namespaced_rules()), f"Role in {role['metadata']['namespace']}"
        )
        assert_bound(objs, role, "RoleBinding")
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert_exactly(
        grants(cluster_role["rules"]), grants(rbac.cluster_rules()), "ClusterRole (namespaced mode)"
    )
    assert_bound(objs, cluster_role, "ClusterRoleBinding")


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    objs = render(extra=["--set", "rbac.create=false"])
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
        assert not by_kind(objs, kind)


def _operator_settings(objs: list[Obj], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    (deployment,) = by_kind(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    for name, value in env.items():
        assert name.startswith(prefix), name
        monkeypatch.setenv(name, value)
    # extra="forbid" on the settings: a misspelt variable fails here rather than being ignored in the pod.
    return OperatorSettings()


def test_operator_env_is_what_its_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render([CI_VALUES_DIR / "namespaced-values.yaml"])
    settings = _operator_settings(objs, monkeypatch)
    assert settings.namespaces == ["voice-a", "voice-b"]
    assert not settings.standalone
    (peering,) = {p["metadata"]["name"] for p in by_kind(objs, "KopfPeering")}
    assert settings.peering_name == peering
    (deployment,) = by_kind(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert {"name": "health", "containerPort": settings.health_port, "protocol": "TCP"} in container["ports"]


def test_cluster_wide_operator_uses_a_cluster_peering(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render(extra=CLUSTER_WIDE)
    settings = _operator_settings(objs, monkeypatch)
    assert settings.clusterwide
    (peering,) = by_kind(objs, "ClusterKopfPeering")
    assert settings.peering_name == peering["metadata"]["name"]


def test_standalone_operator_has_no_peering(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render(extra=["--set", "operator.peering.enabled=false"])
    assert _operator_settings(objs, monkeypatch).standalone
    assert not by_kind(objs, "ClusterKopfPeering")
    assert not by_kind(objs, "KopfPeering")
