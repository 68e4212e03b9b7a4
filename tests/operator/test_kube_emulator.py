"""The test double behaves like an API server where the operator relies on it (SSA, metadata, selectors, GC)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.kube_emulator import matches_label_selector
from tests.support.kube_operator import Cluster, emulated_cluster
from voicechat_operator import kinds

NS = "default"
APPLY = {"content_type": "application/apply-patch+yaml", "params": {"fieldManager": "op", "force": "true"}}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with emulated_cluster() as running:
        yield running


def _cm(data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": NS, **meta},
        "data": data,
    }


async def test_server_side_apply_creates_updates_and_forgets_fields(cluster: Cluster) -> None:
    path = kinds.CONFIG_MAP.path(NS, "c")
    created = await cluster.request("PATCH", path, _cm({"a": "1", "b": "2"}), **APPLY)
    meta = created["metadata"]
    assert meta["uid"]
    assert meta["creationTimestamp"]
    assert meta["generation"] == 1
    assert meta["namespace"] == NS
    # Another manager's field survives our applies; a field we stop applying goes away.
    await cluster.request("PATCH", path, {"data": {"theirs": "x"}})
    same = await cluster.request("PATCH", path, _cm({"a": "1", "b": "2"}), **APPLY)
    again = await cluster.request("PATCH", path, _cm({"a": "1", "b": "2"}), **APPLY)
    assert again["metadata"]["resourceVersion"] == same["metadata"]["resourceVersion"]  # no-op apply
    updated = await cluster.request("PATCH", path, _cm({"a": "9"}), **APPLY)
    assert updated["data"] == {"a": "9", "theirs": "x"}
    assert int(updated["metadata"]["resourceVersion"]) > int(same["metadata"]["resourceVersion"])
    assert updated["metadata"]["uid"] == meta["uid"]


async def test_status_subresource_and_generation(cluster: Cluster) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": NS},
        "spec": {"x": 1},
    }
    await cluster.request("POST", kinds.DEPLOYMENT.path(NS), body, content_type="application/json")
    path = kinds.DEPLOYMENT.path(NS, "d")
    after_status = await cluster.request(
        "PATCH", path + "/status", {"status": {"readyReplicas": 1}, "spec": {"x": 2}}
    )
    assert after_status["spec"] == {"x": 1}  # /status changes only the status
    assert after_status["metadata"]["generation"] == 1
    after_spec = await cluster.request("PATCH", path, {"spec": {"x": 3}, "status": {"readyReplicas": 0}})
    assert after_spec["status"] == {"readyReplicas": 1}  # the main resource cannot change the status
    assert after_spec["metadata"]["generation"] == 2


async def test_owner_deletion_collects_dependents(cluster: Cluster) -> None:
    owner = await cluster.request("PATCH", kinds.CONFIG_MAP.path(NS, "c"), _cm({}), **APPLY)
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": owner["metadata"]["uid"]}
    child = _cm({}, ownerReferences=[ref])
    child["metadata"]["name"] = "child"
    await cluster.request("PATCH", kinds.CONFIG_MAP.path(NS, "child"), child, **APPLY)
    await cluster.request("DELETE", kinds.CONFIG_MAP.path(NS, "c"))
    assert cluster.get(kinds.CONFIG_MAP, NS, "child") is None


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=voice", True),
        ("app==voice,tier!=db", True),
        ("app in (voice, chat)", True),
        ("app notin (voice)", False),
        ("tier", False),
        ("!tier", True),
        ("app=other", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, expected: bool) -> None:
    assert matches_label_selector(selector, {"app": "voice"}) is expected
