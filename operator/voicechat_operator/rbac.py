"""The RBAC rules the operator needs, derived from what its code does (the chart's Role must cover them).

Sources: :data:`kinds.CHILD_KINDS` (what the render functions produce), :data:`kube.OPERATION_VERBS` (the
verbs of the calls :mod:`voicechat_operator.reconcile` makes), :data:`CHILD_OPERATIONS` / :data:`OWNER_OPERATIONS`
(which calls it makes on which kind) and what kopf itself does (watches, events, peering, scanning).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from voicechat_operator import kinds
from voicechat_operator.kube import OPERATION_VERBS

# kopf watches = list + watch.
WATCH_VERBS = ("list", "watch")
# Calls reconcile makes on each child: read to detect drift, replace drifted port lists, apply, and (for
# optional ones) delete.
CHILD_OPERATIONS = ("get", "replace_lists", "apply")
OPTIONAL_CHILD_OPERATIONS = ("delete",)
# Generated Secrets: read (does it exist, which keys), created when absent, missing keys added. Never listed
# or watched: that would read every Secret of the namespace.
GENERATED_OPERATIONS = ("get", "create", "merge_patch")
# On the VoiceChat: the child handlers read their owner; kopf patches its annotations (progress storage).
OWNER_VERBS = ("get", "patch")
OWNER_STATUS_OPERATIONS = ("patch_status",)
# Owner references with blockOwnerDeletion need update on the owner's finalizers subresource
# (OwnerReferencesPermissionEnforcement admission plugin).
OWNER_FINALIZER_VERBS = ("update",)
# kopf posts Kubernetes events about handler progress and failures.
EVENT_VERBS = ("create",)
# kopf peering: read and patch the peering object, watch it for other operators.
PEERING_VERBS = ("get", "list", "watch", "patch")


def _rule(group: str, resources: list[str], verbs: set[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": sorted(resources), "verbs": sorted(verbs)}


def _verbs(operations: tuple[str, ...]) -> set[str]:
    return {verb for op in operations for verb in OPERATION_VERBS[op]}


def namespaced_rules() -> list[dict[str, Any]]:
    """Rules on namespaced resources (a Role in each watched namespace, or part of the ClusterRole)."""
    grants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for kind in kinds.CHILD_KINDS:
        ops = CHILD_OPERATIONS + (OPTIONAL_CHILD_OPERATIONS if kind.optional else ())
        grants[(kind.group, kind.plural)] |= set(WATCH_VERBS) | _verbs(ops)
    for kind in kinds.GENERATED_KINDS:
        grants[(kind.group, kind.plural)] |= _verbs(GENERATED_OPERATIONS)
    owner = kinds.VOICECHAT
    grants[(owner.group, owner.plural)] |= set(WATCH_VERBS) | set(OWNER_VERBS)
    grants[(owner.group, f"{owner.plural}/status")] |= {"get"} | _verbs(OWNER_STATUS_OPERATIONS)
    grants[(owner.group, f"{owner.plural}/finalizers")] |= set(OWNER_FINALIZER_VERBS)
    grants[("", "events")] |= set(EVENT_VERBS)
    grants[("kopf.dev", "kopfpeerings")] |= set(PEERING_VERBS)
    return _merge(grants)


def cluster_rules() -> list[dict[str, Any]]:
    """Rules on cluster-scoped resources (a ClusterRole even when only some namespaces are watched)."""
    grants: dict[tuple[str, str], set[str]] = defaultdict(set)
    # kopf's resource scanning follows CRDs appearing and going; namespace watching serves -A and globs.
    grants[("apiextensions.k8s.io", "customresourcedefinitions")] |= set(WATCH_VERBS)
    grants[("", "namespaces")] |= set(WATCH_VERBS)
    grants[("kopf.dev", "clusterkopfpeerings")] |= set(PEERING_VERBS)
    return _merge(grants)


def _merge(grants: dict[tuple[str, str], set[str]]) -> list[dict[str, Any]]:
    # One rule per (group, verbs) keeps the Role short and readable.
    by_verbs: dict[tuple[str, frozenset[str]], list[str]] = defaultdict(list)
    for (group, resource), verbs in grants.items():
        by_verbs[(group, frozenset(verbs))].append(resource)
    return [
        _rule(group, resources, set(verbs)) for (group, verbs), resources in sorted(by_verbs.items(), key=str)
    ]


def required_rules() -> list[dict[str, Any]]:
    """Every PolicyRule the operator needs when it watches all namespaces (namespaced + cluster rules)."""
    return namespaced_rules() + cluster_rules()


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    """Whether ``rules`` grant ``verb`` on ``group``/``resource`` (wildcards included)."""
    return any(
        (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
        and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
        and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
        for rule in rules
    )
