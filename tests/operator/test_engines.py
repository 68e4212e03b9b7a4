"""Hosted LLM engines (external, bedrock): spec rules, rendered children, switching engines, status."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from voicechat_operator import kinds
from voicechat_operator.env import env_name
from voicechat_operator.probe import CheckResult
from voicechat_operator.render import (
    Owner,
    absent_children,
    endpoints,
    generated_secrets,
    in_cluster_host,
    render_children,
    render_config_map,
    url_port,
)
from voicechat_operator.spec import InvalidSpecError, VoiceChatSpec, parse_spec
from voicechat_operator.status import build_status, status_changed
from voicechat_session.settings import SessionSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "operator" / "examples"
OWNER = Owner(name="demo", namespace="voice", uid="6f1c2b7e-0000-4000-8000-000000000002")
SESSION = {"minReplicas": 1, "maxReplicas": 3}


def _env_var(field: str) -> str:
    return env_name(SessionSettings, field)


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"voicechat-{name}.yaml").read_text())["spec"]
    return doc


def _parse(llm: dict[str, Any], session: dict[str, Any] | None = None) -> VoiceChatSpec:
    return parse_spec("demo", {"llm": llm, "session": session or dict(SESSION)})


EXTERNAL = {"engine": "external", "url": "https://llm.example.com:8443/v1", "model": "gpt-4o-mini"}
EXTERNAL_KEYED = {**EXTERNAL, "apiKeySecret": {"name": "provider-key"}}
BEDROCK = {
    "engine": "bedrock",
    "model": "meta.llama3-1-8b-instruct-v1:0",
    "bedrock": {"region": "eu-central-1"},
}


def _names(children: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["kind"], c["metadata"]["name"]) for c in children}


def _by_kind(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in children if c["kind"] == kind and c["metadata"]["name"] == name]
    return found


def _session_pod(children: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _by_kind(children, "Deployment", "demo-session")["spec"]["template"]["spec"]
    return spec


def _session_env(spec: VoiceChatSpec) -> dict[str, str]:
    """The session pods' settings: ConfigMap values for configMapKeyRefs, 'secret:NAME/KEY' for secretKeyRefs."""
    children = render_children(OWNER, spec)
    data = render_config_map(OWNER, spec)["data"]
    env: dict[str, str] = {}
    for var in _session_pod(children)["containers"][0]["env"]:
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            env[var["name"]] = data[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            env[var["name"]] = var["value"]
    return env


# --- spec --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("llm", "needle"),
    [
        ({"engine": "external", "model": "m"}, "llm.engine external needs llm.url"),
        ({"engine": "external", "url": "https://x/v1"}, "llm.engine external needs llm.model"),
        ({"engine": "bedrock", "model": "m"}, "llm.engine bedrock needs llm.bedrock.region"),
        ({"engine": "bedrock", "bedrock": {"region": "us-east-1"}}, "llm.engine bedrock needs llm.model"),
        ({"engine": "bedrock", "bedrock": {}, "model": "m"}, "needs llm.bedrock.region"),
        ({"engine": "vllm", "url": "https://x/v1"}, "llm.url applies only to llm.engine external"),
        (
            {"engine": "llamacpp", "gpu": {"count": 0}, "bedrock": {"region": "us-east-1"}},
            "llm.bedrock applies",
        ),
        ({**BEDROCK, "apiKeySecret": {"name": "k"}}, "apiKeySecret does not apply to bedrock"),
        ({**EXTERNAL, "url": "ftp://x/v1"}, "spec.llm.url"),
        ({**EXTERNAL, "url": "https://x y/v1"}, "spec.llm.url"),
        ({**BEDROCK, "bedrock": {"region": "Frankfurt"}}, "spec.llm.bedrock.region"),
        ({**EXTERNAL, "url": "http://169.254.169.254/latest"}, "link-local or cloud metadata"),
        ({**EXTERNAL, "url": "http://[fd00:ec2::254]/v1"}, "link-local or cloud metadata"),
    ],
)
def test_incomplete_hosted_engine_specs_are_refused_with_the_reason(llm: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        _parse(llm)
    assert needle in str(err.value)


def test_hosted_engines_skip_the_llm_pod_rules() -> None:
    # vllm needs a GPU and a startup budget above the warm-up timeout: neither means anything without LLM pods.
    spec = _parse({**EXTERNAL, "gpu": {"count": 0}, "startupBudgetSeconds": 60})
    assert spec.llm.engine == "external"


def test_the_crd_carries_the_engine_rules_as_cel() -> None:
    crd = yaml.safe_load(
        (
            Path(__file__).resolve().parents[2]
            / "operator/voicechat_operator/crds/voicechats.voicechat.io.yaml"
        ).read_text()
    )
    llm = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["llm"]
    assert llm["properties"]["engine"]["enum"] == ["vllm", "llamacpp", "external", "bedrock"]
    rules = " ".join(rule["rule"] for rule in llm["x-kubernetes-validations"])
    assert "self.engine != 'external' || (has(self.url) && has(self.model))" in rules
    assert "has(self.bedrock.region)" in rules


# --- rendering ---------------------------------------------------------------------------------------------


LLM_CHILDREN = {("Deployment", "demo-llm"), ("Service", "demo-llm"), ("NetworkPolicy", "demo-llm")}


@pytest.mark.parametrize("llm", [EXTERNAL, EXTERNAL_KEYED, BEDROCK], ids=["external", "keyed", "bedrock"])
def test_hosted_engines_render_no_llm_objects(llm: dict[str, Any]) -> None:
    spec = _parse(llm)
    children = render_children(OWNER, spec)
    assert not LLM_CHILDREN & _names(children)
    assert set(LLM_CHILDREN) <= {(kind.kind, name) for kind, name in absent_children(OWNER, spec)}
    # No generated engine key (never for a provider's key); the session Secrets are still generated.
    assert [s.name for s in generated_secrets(OWNER, spec)] == ["demo-session-resume", "demo-session-auth"]
    assert not any(key.startswith("VOICECHAT_LLM_") for key in render_config_map(OWNER, spec)["data"])
    for child in children:
        kubernetes_validate.validate(child, "1.33", strict=True)


def test_in_cluster_engines_keep_their_llm_objects() -> None:
    spec = parse_spec("demo", _example("minimal"))
    assert _names(render_children(OWNER, spec)) >= LLM_CHILDREN
    assert not {(kind.kind, name) for kind, name in absent_children(OWNER, spec)} & LLM_CHILDREN
    env = _session_env(spec)
    assert env[_env_var("llm_url")] == "http://demo-llm.voice.svc:8000/v1"
    assert env[_env_var("llm_warmup_url")] == "http://demo-llm.voice.svc:8001/warmup"
    assert env[_env_var("llm_api_key")] == "secret:demo-llm-api-key/api-key"
    # Unchanged for in-cluster engines: upgrading the operator does not roll their session pods.
    assert _env_var("llm_provider") not in env
    assert "serviceAccountName" not in _session_pod(render_children(OWNER, spec))


def test_external_session_environment() -> None:
    env = _session_env(_parse(EXTERNAL_KEYED))
    assert env[_env_var("llm_provider")] == "openai"
    assert env[_env_var("llm_url")] == EXTERNAL["url"]
    assert env[_env_var("llm_model")] == "gpt-4o-mini"
    assert env[_env_var("llm_api_key")] == "secret:provider-key/api-key"
    assert _env_var("llm_warmup_url") not in env
    assert not any("BEDROCK" in key for key in env)
    # A keyless local server (Ollama, LM Studio): no key variable at all, and nothing generated.
    keyless = _session_env(_parse(EXTERNAL))
    assert _env_var("llm_api_key") not in keyless


def test_bedrock_session_environment_and_identity() -> None:
    spec = _parse(
        {**BEDROCK, "bedrock": {"region": "eu-central-1", "endpointUrl": "https://vpce-1.bedrock.local:8443"}}
    )
    env = _session_env(spec)
    assert env[_env_var("llm_provider")] == "bedrock"
    assert env[_env_var("llm_model")] == "meta.llama3-1-8b-instruct-v1:0"
    assert env[_env_var("bedrock_region")] == "eu-central-1"
    assert env[_env_var("bedrock_endpoint_url")] == "https://vpce-1.bedrock.local:8443"
    assert _env_var("llm_api_key") not in env
    assert _env_var("llm_warmup_url") not in env
    assert not any(key.startswith("AWS_") for key in env)  # never keys in the spec or the pods
    children = render_children(OWNER, spec)
    account = _by_kind(children, "ServiceAccount", "demo-session")
    assert account["automountServiceAccountToken"] is False
    assert "annotations" not in account["metadata"]  # EKS Pod Identity: the name is enough
    pod = _session_pod(children)
    assert pod["serviceAccountName"] == "demo-session"
    assert pod["automountServiceAccountToken"] is False
    # The ServiceAccount comes before the Deployment that names it.
    order = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert order.index(("ServiceAccount", "demo-session")) < order.index(("Deployment", "demo-session"))
    assert endpoints(OWNER, spec) == {
        "llm": "https://vpce-1.bedrock.local:8443",
        "session": "http://demo-session.voice.svc",
    }


def test_service_account_annotations_carry_irsa() -> None:
    role = "arn:aws:iam::111122223333:role/voicechat-bedrock"
    spec = parse_spec("demo", _example("bedrock"))
    account = _by_kind(render_children(OWNER, spec), "ServiceAccount", "demo-session")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert account["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    # Any engine may ask for one (e.g. a gateway that authenticates workloads).
    session = {**SESSION, "serviceAccount": {"annotations": {"example.com/identity": "a"}}}
    external = render_children(OWNER, _parse(EXTERNAL, session))
    assert _session_pod(external)["serviceAccountName"] == "demo-session"
    assert (kinds.SERVICE_ACCOUNT, "demo-session") not in absent_children(OWNER, _parse(EXTERNAL, session))
    assert (kinds.SERVICE_ACCOUNT, "demo-session") in absent_children(OWNER, _parse(EXTERNAL))


def _egress(spec: VoiceChatSpec) -> list[dict[str, Any]]:
    policy = _by_kind(render_children(OWNER, spec), "NetworkPolicy", "demo-session")
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule["ports"]}


def test_session_egress_reaches_the_external_url_port_and_not_the_metadata_service() -> None:
    rules = _egress(_parse(EXTERNAL))
    (llm,) = [r for r in rules if 8443 in _ports(r)]
    assert _ports(llm) == {8443}
    blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for p in llm["to"] if "ipBlock" in p}
    assert blocks == {"0.0.0.0/0": ["169.254.0.0/16"], "::/0": ["fe80::/10", "fd00:ec2::/32"]}
    assert {"namespaceSelector": {}} not in llm["to"]  # a provider's port does not open every pod on it
    # Nothing reaches LLM pods that do not exist.
    assert not any(
        "podSelector" in peer for r in rules for peer in r.get("to", []) if "namespaceSelector" not in peer
    )
    plain = _egress(_parse({**EXTERNAL, "url": "http://ollama.tools.svc:11434/v1"}))
    (ollama,) = [r for r in plain if _ports(r) == {11434}]
    assert {"namespaceSelector": {}} in ollama["to"]  # an in-cluster server: pods of any namespace too


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("http://ollama:11434/v1", True),
        ("http://ollama.tools:11434/v1", True),
        ("http://ollama.tools.svc:11434/v1", True),
        ("http://ollama.tools.svc.cluster.local:11434/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://gateway.example.internal.corp/v1", False),
        ("http://10.0.0.7:8000/v1", False),
    ],
)
def test_in_cluster_hosts(url: str, inside: bool) -> None:
    assert in_cluster_host(url) is inside


def test_session_egress_for_bedrock_covers_https_and_the_pod_identity_agent() -> None:
    rules = _egress(_parse(BEDROCK))
    assert any(_ports(r) == {443} for r in rules)
    (agent,) = [r for r in rules if _ports(r) == {80}]
    assert {"ipBlock": {"cidr": "169.254.170.23/32"}} in agent["to"]
    override = _egress(
        _parse({**BEDROCK, "bedrock": {"region": "us-east-1", "endpointUrl": "http://e:4566"}})
    )
    assert any(_ports(r) == {443, 4566} for r in override)


@pytest.mark.parametrize(
    ("url", "port"),
    [("https://a/v1", 443), ("http://a/v1", 80), ("http://a:11434/v1", 11434), ("https://a:8443", 8443)],
)
def test_url_port(url: str, port: int) -> None:
    assert url_port(url) == port


# --- switching engines -------------------------------------------------------------------------------------


def _present_after(spec: VoiceChatSpec, before: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """What exists once the reconcile applied ``spec`` on top of children ``before`` (as _converge does)."""
    removed = {(kind.kind, name) for kind, name in absent_children(OWNER, spec)}
    return (before - removed) | _names(render_children(OWNER, spec))


@pytest.mark.parametrize("hosted", [EXTERNAL, BEDROCK], ids=["external", "bedrock"])
def test_switching_engines_both_ways_removes_what_is_no_longer_wanted(hosted: dict[str, Any]) -> None:
    in_cluster = parse_spec("demo", _example("minimal"))
    hosted_spec = _parse(hosted)
    start = _names(render_children(OWNER, in_cluster))
    moved = _present_after(hosted_spec, start)
    assert moved == _names(render_children(OWNER, hosted_spec))
    assert not moved & LLM_CHILDREN
    back = _present_after(in_cluster, moved)
    assert back == start  # the bedrock ServiceAccount goes again, the LLM objects come back
    assert ("ServiceAccount", "demo-session") not in back


# --- status ------------------------------------------------------------------------------------------------


def _deployment(ready: int, replicas: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def _llm_condition(status: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == "LLMReady"]
    return found


def test_external_llm_ready_is_the_operators_check() -> None:
    ok = CheckResult(True, "EndpointReachable", "GET …/models: HTTP 200", 42, "2026-12-03T07:00:00Z")
    status = build_status(
        generation=2,
        llm_deployment=None,
        session_deployment=_deployment(1, 1),
        endpoints=endpoints(OWNER, _parse(EXTERNAL)),
        problem=None,
        previous={"endpoints": {"llm": "x", "warmup": "http://old/warmup", "session": "s"}},
        engine="external",
        llm_check=ok,
    )
    assert (_llm_condition(status)["status"], _llm_condition(status)["reason"]) == (
        "True",
        "EndpointReachable",
    )
    assert status["llm"]["checkLatencyMs"] == 42
    assert status["llm"]["lastCheckTime"] == "2026-12-03T07:00:00Z"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert status["endpoints"]["warmup"] is None  # removed from the stored status by the merge patch
    stored = {**status, "endpoints": {k: v for k, v in status["endpoints"].items() if v is not None}}
    assert not status_changed(status, stored)  # once removed, the same observation writes nothing
    bad = CheckResult(False, "Unauthorized", "GET …/models: HTTP 401", 3, "2026-12-03T07:01:00Z")
    failed = build_status(
        generation=2,
        llm_deployment=None,
        session_deployment=_deployment(1, 1),
        endpoints=None,
        problem=None,
        previous=None,
        engine="external",
        llm_check=bad,
    )
    assert (_llm_condition(failed)["status"], _llm_condition(failed)["reason"]) == ("False", "Unauthorized")
    assert [c["reason"] for c in failed["conditions"] if c["type"] == "Ready"] == ["LLMNotReady"]
    unchecked = build_status(
        generation=1,
        llm_deployment=None,
        session_deployment=None,
        endpoints=None,
        problem=None,
        previous=None,
        engine="external",
    )
    assert _llm_condition(unchecked)["reason"] == "NotChecked"


def test_bedrock_llm_ready_comes_from_the_session_pods_check() -> None:
    def llm(sessions: dict[str, Any] | None) -> dict[str, Any]:
        return _llm_condition(
            build_status(
                generation=1,
                llm_deployment=None,
                session_deployment=sessions,
                endpoints=None,
                problem=None,
                previous=None,
                engine="bedrock",
            )
        )

    waiting = llm(_deployment(0, 2))
    assert (waiting["status"], waiting["reason"]) == ("False", "NoReadySessionPods")
    ready = llm(_deployment(1, 2))
    assert ready["status"] == "True"
    assert "session pods" in ready["message"]
    assert "Bedrock" in ready["message"]
    assert llm(None)["status"] == "False"


def test_invalid_hosted_spec_example_copies_stay_valid() -> None:
    # The shipped examples parse (the CRD tests check they fit the schema too).
    for name in ("openai", "bedrock"):
        spec = parse_spec("demo", copy.deepcopy(_example(name)))
        assert spec.llm.engine in ("external", "bedrock")
