"""End to end: the real kopf operator reconciling VoiceChats on the emulated API server."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kubernetes_validate
import pytest
import yaml

from tests.support.kube_emulator import kube_request
from tests.support.kube_operator import (
    Cluster,
    emulated_cluster,
    eventually,
    running_operator,
    write_kubeconfig,
)
from tests.support.kube_schema import CRD_DIR, minimal_voicechat
from voicechat_common.localstack import free_port
from voicechat_operator import kinds
from voicechat_operator.render import CONFIG_HASH_ANNOTATION, Owner, render_children
from voicechat_operator.settings import OperatorSettings
from voicechat_operator.spec import parse_spec

NS = "voice"
MINIMAL: dict[str, Any] = minimal_voicechat(NS)
PEERINGS = kmock.resource(group="kopf.dev", version="v1", plural="clusterkopfpeerings")
CHILDREN = [
    (kinds.CONFIG_MAP, "demo-config"),
    (kinds.SERVICE, "demo-llm"),
    (kinds.NETWORK_POLICY, "demo-llm"),
    (kinds.DEPLOYMENT, "demo-llm"),
    (kinds.SERVICE, "demo-session"),
    (kinds.DEPLOYMENT, "demo-session"),
    (kinds.HPA, "demo-session"),
    (kinds.PDB, "demo-session"),
]


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with emulated_cluster() as running:
        running.emulator.namespaces |= {NS, "other"}
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", running.server)))
        yield running


def _vc(cluster: Cluster) -> dict[str, Any]:
    vc = cluster.get(kinds.VOICECHAT, NS, "demo")
    assert vc is not None
    return vc


def _condition(cluster: Cluster, type_: str) -> dict[str, Any] | None:
    vc = cluster.get(kinds.VOICECHAT, NS, "demo") or {}
    return next((c for c in vc.get("status", {}).get("conditions", []) if c["type"] == type_), None)


def _condition_is(
    cluster: Cluster, type_: str, status: str, reason: str | None = None
) -> dict[str, Any] | None:
    cond = _condition(cluster, type_)
    if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
        return cond
    return None


def _all_children(cluster: Cluster) -> list[dict[str, Any]] | None:
    found = [cluster.get(kind, NS, name) for kind, name in CHILDREN]
    return [c for c in found if c is not None] if all(found) else None


async def _create(cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = await cluster.request("POST", kinds.VOICECHAT.path(NS), body)
    return created


async def test_create_update_drift_invalid_status_and_delete(cluster: Cluster, tmp_path: Path) -> None:
    async with running_operator(cluster, tmp_path) as health:
        async with aiohttp.ClientSession() as http, http.get(health) as rsp:
            assert rsp.status == 200  # kopf's liveness endpoint

        # Create: every child, owned by the VoiceChat (its server-set uid), labelled.
        vc = await _create(cluster, MINIMAL)
        uid = vc["metadata"]["uid"]
        children = await eventually(lambda: _all_children(cluster), what="all children")
        for child in children:
            assert child["metadata"]["ownerReferences"][0]["uid"] == uid
            assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voicechat-operator"
        assert "replicas" not in cluster.get(kinds.DEPLOYMENT, NS, "demo-session")["spec"]  # type: ignore[index]
        assert cluster.get(kinds.POD_MONITOR, NS, "demo") is None

        # Status before any pod is ready: truthful, not Ready.
        await eventually(
            lambda: _condition_is(cluster, "LLMReady", "False", "WarmingUp"), what="LLM warming up"
        )
        status = _vc(cluster)["status"]
        assert status["observedGeneration"] == 1
        assert status["endpoints"]["llm"] == "http://demo-llm.voice.svc:8000/v1"
        assert _condition_is(cluster, "Ready", "False", "LLMNotReady")

        # Status follows the child Deployments as their controllers (and the HPA) update them.
        await cluster.merge_patch(
            kinds.DEPLOYMENT, NS, "demo-llm", {"status": {"readyReplicas": 1}}, "status"
        )
        await eventually(lambda: _condition_is(cluster, "LLMReady", "True"), what="LLM warm")
        assert _condition_is(cluster, "Ready", "False", "SessionsNotReady")
        await cluster.merge_patch(kinds.DEPLOYMENT, NS, "demo-session", {"spec": {"replicas": 3}})  # the HPA
        await cluster.merge_patch(
            kinds.DEPLOYMENT, NS, "demo-session", {"status": {"readyReplicas": 3}}, "status"
        )
        ready = await eventually(lambda: _condition_is(cluster, "Ready", "True", "Ready"), what="Ready")
        assert _vc(cluster)["status"]["sessions"] == {"readyReplicas": 3, "desiredReplicas": 3}
        assert ready["lastTransitionTime"]

        # Update: a new system prompt changes the ConfigMap and rolls both pod templates.
        hashes = {
            name: cluster.get(kinds.DEPLOYMENT, NS, name)["spec"]["template"]["metadata"]["annotations"][  # type: ignore[index]
                CONFIG_HASH_ANNOTATION
            ]
            for name in ("demo-llm", "demo-session")
        }
        await cluster.merge_patch(
            kinds.VOICECHAT,
            NS,
            "demo",
            {"spec": {"llm": {"systemPrompt": "Talk like a pirate."}, "session": {"maxReplicas": 12}}},
        )
        await eventually(
            lambda: (
                (cluster.get(kinds.CONFIG_MAP, NS, "demo-config") or {})
                .get("data", {})
                .get("system-prompt.txt")
                == "Talk like a pirate."
            ),
            what="new prompt in the ConfigMap",
        )
        await eventually(
            lambda: cluster.get(kinds.HPA, NS, "demo-session")["spec"]["maxReplicas"] == 12,  # type: ignore[index]
            what="HPA maxReplicas 12",
        )
        for name, before in hashes.items():
            template = cluster.get(kinds.DEPLOYMENT, NS, name)["spec"]["template"]  # type: ignore[index]
            assert template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != before
        await eventually(
            lambda: _vc(cluster)["status"].get("observedGeneration") == 2, what="observedGeneration 2"
        )
        # The HPA's replicas were never taken over by the operator's applies.
        assert cluster.get(kinds.DEPLOYMENT, NS, "demo-session")["spec"]["replicas"] == 3  # type: ignore[index]

        # Drift: a deleted child comes back; a hand edit is reverted.
        old_uid = cluster.get(kinds.SERVICE, NS, "demo-llm")["metadata"]["uid"]  # type: ignore[index]
        await cluster.request("DELETE", kinds.SERVICE.path(NS, "demo-llm"))
        restored = await eventually(
            lambda: (
                (svc := cluster.get(kinds.SERVICE, NS, "demo-llm"))
                and svc["metadata"]["uid"] != old_uid
                and svc
            ),
            what="LLM Service restored",
        )
        assert restored["spec"]["ports"][0]["port"] == 8000
        await cluster.merge_patch(kinds.HPA, NS, "demo-session", {"spec": {"maxReplicas": 99}})
        await eventually(
            lambda: cluster.get(kinds.HPA, NS, "demo-session")["spec"]["maxReplicas"] == 12,  # type: ignore[index]
            what="hand edit reverted",
        )

        # Invalid spec the schema accepts: Ready=False InvalidSpec, nothing applied.
        mark = cluster.request_count()
        await cluster.merge_patch(kinds.VOICECHAT, NS, "demo", {"spec": {"session": {"maxReplicas": 1}}})
        invalid = await eventually(
            lambda: _condition_is(cluster, "Ready", "False", "InvalidSpec"), what="InvalidSpec condition"
        )
        assert "maxReplicas (1) is less than session.minReplicas (2)" in invalid["message"]
        assert [w for w in cluster.writes_since(mark) if "/voicechats/" not in w] == []
        assert cluster.get(kinds.HPA, NS, "demo-session")["spec"]["maxReplicas"] == 12  # type: ignore[index]

        # Fixed again, with monitoring on: the PodMonitor appears; off again: it goes.
        await cluster.merge_patch(
            kinds.VOICECHAT,
            NS,
            "demo",
            {"spec": {"session": {"maxReplicas": 5}, "monitoring": {"podMonitor": True}}},
        )
        await eventually(lambda: cluster.get(kinds.POD_MONITOR, NS, "demo"), what="PodMonitor created")
        await eventually(lambda: _condition_is(cluster, "Ready", "True"), what="Ready again")
        await cluster.merge_patch(
            kinds.VOICECHAT, NS, "demo", {"spec": {"monitoring": {"podMonitor": False}}}
        )
        await eventually(
            lambda: cluster.get(kinds.POD_MONITOR, NS, "demo") is None, what="PodMonitor deleted"
        )

        # Delete: the children are collected through their owner references.
        await cluster.request("DELETE", kinds.VOICECHAT.path(NS, "demo"))
        await eventually(
            lambda: all(cluster.get(kind, NS, name) is None for kind, name in CHILDREN),
            what="children collected",
        )


async def test_restart_causes_no_churn_and_repairs_what_changed_meanwhile(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with running_operator(cluster, tmp_path):
        await _create(cluster, MINIMAL)
        await eventually(lambda: _all_children(cluster), what="all children")
        await eventually(lambda: _condition(cluster, "Ready"), what="status written")

    # Restart with nothing changed: the resume handler and two timer ticks read every child, but write nothing.
    mark = cluster.request_count()
    async with running_operator(cluster, tmp_path, resync_interval_s=1.0):
        last_child = kinds.PDB.path(NS, "demo-session")
        await eventually(
            lambda: (
                sum(r.method == "GET" and r.url.path == last_child for r in list(cluster.emulator)[mark:])
                >= 3
            ),
            what="resume and two timer ticks compared every child",
        )
    assert cluster.writes_since(mark) == [], cluster.writes_since(mark)

    # While the operator is down, someone deletes a child: the next start restores just that one.
    await cluster.request("DELETE", kinds.PDB.path(NS, "demo-session"))
    mark = cluster.request_count()
    async with running_operator(cluster, tmp_path):
        await eventually(lambda: cluster.get(kinds.PDB, NS, "demo-session"), what="PDB restored on resume")
    assert cluster.writes_since(mark) == ["PATCH " + kinds.PDB.path(NS, "demo-session")]


async def test_invalid_spec_at_creation_applies_nothing(cluster: Cluster, tmp_path: Path) -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"]["session"]["autoscaling"] = {
        "targetCPUUtilizationPercent": 0,
        "targetActiveSessionsPerPod": 0,
    }
    async with running_operator(cluster, tmp_path):
        await _create(cluster, body)
        cond = await eventually(
            lambda: _condition_is(cluster, "Ready", "False", "InvalidSpec"), what="InvalidSpec"
        )
        assert "targetCPUUtilizationPercent" in cond["message"]
        assert all(cluster.get(kind, NS, name) is None for kind, name in CHILDREN)
        assert _vc(cluster)["status"]["observedGeneration"] == 1

        def warning_event() -> dict[str, Any] | None:
            events = [
                obj.raw
                for (resource, namespace, _), obj in cluster.emulator.objects.items()
                if resource.plural == "events" and namespace == NS and not obj.deleted
            ]
            return next(
                (
                    e
                    for e in events
                    if e["involvedObject"]["name"] == "demo" and "invalid spec" in e["message"]
                ),
                None,
            )

        event = await eventually(warning_event, what="a Kubernetes event for kubectl describe")
        assert "targetCPUUtilizationPercent" in event["message"]
        assert (event["type"], event["reason"]) == ("Warning", "InvalidSpec")


async def test_schema_rejects_what_it_can(cluster: Cluster) -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"]["llm"]["engine"] = "tgi"
    status, payload = await kube_request(
        cluster.server, "POST", kinds.VOICECHAT.path(NS), body, content_type="application/json"
    )
    assert status == 422
    assert "engine" in payload["message"]


async def test_console_script_runs_the_operator(cluster: Cluster, tmp_path: Path) -> None:
    """`voicechat-operator` as the container runs it: settings from the environment, liveness, SIGTERM."""
    port = free_port()
    env = {
        **os.environ,
        "VOICECHAT_OPERATOR_STANDALONE": "true",
        "VOICECHAT_OPERATOR_HEALTH_HOST": "127.0.0.1",
        "VOICECHAT_OPERATOR_HEALTH_PORT": str(port),
        "VOICECHAT_OPERATOR_NAMESPACES": f"{NS},other",
        "VOICECHAT_OPERATOR_LOG_FORMAT": "json",
    }
    script = Path(sys.executable).with_name("voicechat-operator")
    log = (tmp_path / "operator.log").open("wb")
    process = await asyncio.create_subprocess_exec(str(script), env=env, stdout=log, stderr=log)
    try:

        async def healthy() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/healthz") as rsp,
                ):
                    return rsp.status == 200
            except aiohttp.ClientError:
                return process.returncode is not None  # stop polling a dead process

        await eventually(healthy, what="liveness endpoint", within=90)
        assert process.returncode is None, (tmp_path / "operator.log").read_text()
        await _create(cluster, MINIMAL)
        await eventually(lambda: _all_children(cluster), what="all children", within=90)
        await eventually(lambda: _condition(cluster, "Ready"), what="status", within=90)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=60)
        log.close()
    assert code == 0, (tmp_path / "operator.log").read_text()[-3000:]
    lines = [
        json.loads(line)
        for line in (tmp_path / "operator.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(line["msg"] == "children applied" and line["voicechat"] == "demo" for line in lines)


async def test_peering_lets_only_the_highest_priority_replica_act(cluster: Cluster, tmp_path: Path) -> None:
    """Two replicas sharing the kopf peering object: the one with the lower priority stays paused."""
    peering = yaml.safe_load((CRD_DIR / "clusterkopfpeerings.kopf.dev.yaml").read_text())
    cluster.emulator.declare_crd(peering)
    name = OperatorSettings().peering_name
    await cluster.request(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}},
        content_type="application/json",
    )

    def peers() -> dict[str, Any]:
        obj = cluster.emulator.get_object(PEERINGS, None, name) or {}
        return dict(obj.get("status") or {})

    leader = {"standalone": False, "priority": 100, "field_manager": "replica-a"}
    follower = {"standalone": False, "priority": 0, "field_manager": "replica-b"}
    async with running_operator(cluster, tmp_path, **leader):
        await eventually(
            lambda: any(p.get("priority") == 100 for p in peers().values()), what="leader announced"
        )
        async with running_operator(cluster, tmp_path, **follower):
            await eventually(
                lambda: any(p.get("priority") == 0 for p in peers().values()), what="follower announced"
            )
            mark = cluster.request_count()
            await _create(cluster, MINIMAL)
            await eventually(lambda: _all_children(cluster), what="all children")
            await eventually(lambda: _condition(cluster, "Ready"), what="status written")
            managers = {
                r.params.get("fieldManager")
                for r in list(cluster.emulator)[mark:]
                if r.method == "PATCH" and "fieldManager" in r.params
            }
    assert managers == {"replica-a"}


EXAMPLES = {
    path.stem: yaml.safe_load(path.read_text())
    for path in sorted((Path(__file__).resolve().parents[2] / "operator" / "examples").glob("*.yaml"))
}


@pytest.mark.parametrize("example", EXAMPLES)
async def test_every_example_reconciles_into_valid_children(
    cluster: Cluster, tmp_path: Path, example: str
) -> None:
    """`kubectl apply -f operator/examples/X.yaml`: every child the server stores is a valid object."""
    body = copy.deepcopy(EXAMPLES[example])
    body["metadata"]["namespace"] = NS
    name = body["metadata"]["name"]
    spec = parse_spec(name, body["spec"])
    owner = Owner(name=name, namespace=NS, uid="-")
    expected = [(kinds.kind_of(obj), obj["metadata"]["name"]) for obj in render_children(owner, spec)]
    async with running_operator(cluster, tmp_path):
        await _create(cluster, body)
        stored = await eventually(
            lambda: (
                all(cluster.get(kind, NS, n) for kind, n in expected)
                and [cluster.get(kind, NS, n) for kind, n in expected]
            ),
            what=f"children of {example}",
        )
    for obj in stored:
        if obj["kind"] != "PodMonitor":
            kubernetes_validate.validate(obj, "1.33", strict=True)
