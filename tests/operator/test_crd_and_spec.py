"""The CRD is a valid structural schema; example CRs fit it; the typed spec agrees with its defaults."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.kube_schema import (
    CRD_DIR,
    apply_defaults,
    load_crd,
    minimal_voicechat,
    storage_schema,
    to_jsonschema,
    validate_custom_resource,
)
from voicechat_llm.settings import DEFAULT_SYSTEM_PROMPT, LLMSettings
from voicechat_operator import API_VERSION, GROUP, KIND, PLURAL
from voicechat_operator.spec import InvalidSpecError, VoiceChatSpec, parse_spec
from voicechat_operator.status import build_status
from voicechat_session.settings import SessionSettings

K8S_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "operator" / "examples").glob("*.yaml"))
DESIGN_MINIMAL: dict[str, Any] = minimal_voicechat()


def _example_crs() -> list[dict[str, Any]]:
    docs = [DESIGN_MINIMAL]
    for path in [*EXAMPLES, *sorted((REPO / "manifests" / "examples").glob("*.yaml"))]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == KIND]
    return docs


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_shipped_crds_are_valid_kubernetes_objects(path: Path, k8s: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), k8s, strict=True)


def test_crd_names_match_the_design(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (GROUP, KIND, PLURAL)
    assert spec["names"]["shortNames"] == ["vc"]
    (version,) = spec["versions"]
    assert f"{GROUP}/{version['name']}" == API_VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["LLM-Warm"] == '.status.conditions[?(@.type=="LLMReady")].status'
    assert columns["Sessions-Ready"] == ".status.sessions.readyReplicas"
    assert columns["Sessions-Desired"] == ".status.sessions.desiredReplicas"
    assert columns["Age"] == ".metadata.creationTimestamp"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        found += _walk(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _walk(schema[key], f"{path}[{key}]")
    return found


def test_schema_is_structural_and_documented(crd: dict[str, Any]) -> None:
    schema = storage_schema(crd)
    for path, node in _walk(schema):
        # Structural: every node has a type, unless it is int-or-string or preserves unknown fields.
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), path
        if "default" in node:  # defaults must themselves validate (the API server checks this)
            jsonschema.validate(node["default"], {k: v for k, v in node.items() if not k.startswith("x-")})
    spec = schema["properties"]["spec"]
    for path, node in _walk(spec, ".spec"):
        if path.count(".") <= 3 and "[" not in path and node.get("type") == "object" and path != ".spec":
            assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize("cr", _example_crs(), ids=lambda d: d["metadata"]["name"])
def test_example_crs_fit_the_crd_and_the_typed_spec(crd: dict[str, Any], cr: dict[str, Any]) -> None:
    validate_custom_resource(crd, cr, strict=True)
    parse_spec(cr["metadata"]["name"], cr["spec"])  # and every cross-field rule holds


@pytest.mark.parametrize("cr", _example_crs(), ids=lambda d: d["metadata"]["name"])
def test_defaults_agree_whether_or_not_the_api_server_applied_them(
    crd: dict[str, Any], cr: dict[str, Any]
) -> None:
    schema = storage_schema(crd)["properties"]["spec"]
    raw = parse_spec(cr["metadata"]["name"], cr["spec"])
    defaulted_spec = apply_defaults(schema, cr["spec"])
    if cr is DESIGN_MINIMAL:
        assert defaulted_spec != cr["spec"]  # the API server does fill in defaults here
    assert parse_spec(cr["metadata"]["name"], defaulted_spec) == raw


def test_crd_defaults_are_the_services_defaults(crd: dict[str, Any]) -> None:
    spec = apply_defaults(storage_schema(crd)["properties"]["spec"], {"llm": {}, "session": {}})
    llm, session = spec["llm"], spec["session"]
    assert " ".join(llm["systemPrompt"].split()) == DEFAULT_SYSTEM_PROMPT
    assert llm["maxModelLen"] == LLMSettings.model_fields["max_model_len"].default
    assert llm["warmupTimeoutSeconds"] == LLMSettings.model_fields["startup_timeout_s"].default
    assert llm["drainSeconds"] == LLMSettings.model_fields["drain_timeout_s"].default
    fields = SessionSettings.model_fields
    assert session["maxSessionsPerPod"] == fields["max_sessions"].default
    assert session["drainSeconds"] == fields["drain_grace_s"].default
    assert session["stt"] == {
        "engine": fields["stt_backend"].default,
        "device": fields["stt_device"].default,
        "computeType": fields["stt_compute_type"].default,
        "language": fields["stt_language"].default,
    }
    assert session["tts"] == {
        "engine": fields["tts_backend"].default,
        "voice": fields["tts_voice"].default,
        "speed": fields["tts_speed"].default,
        "device": fields["tts_device"].default,
    }


def test_eks_g5_defaults() -> None:
    spec = parse_spec("demo", DESIGN_MINIMAL["spec"])
    assert spec.llm.engine == "vllm"
    assert (spec.llm.gpu.count, spec.llm.gpu.resource_name) == (1, "nvidia.com/gpu")
    assert spec.llm.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec.llm.resources.requests == {"cpu": "3500m", "memory": "12Gi"}
    assert spec.session.resources.requests == {"cpu": "2", "memory": "3Gi"}
    assert spec.session.autoscaling.target_cpu_utilization_percent == 70


def _with(path: str, value: Any) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(DESIGN_MINIMAL["spec"])
    node = spec
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (_with("session.maxReplicas", 1), "maxReplicas (1) is less than session.minReplicas (2)"),
        (
            _with("session.autoscaling", {"targetCPUUtilizationPercent": 0}),
            "needs targetCPUUtilizationPercent",
        ),
        (
            _with("session.autoscaling", {"targetActiveSessionsPerPod": 9}),
            "exceeds session.maxSessionsPerPod (8)",
        ),
        (_with("llm.startupBudgetSeconds", 60), "startupBudgetSeconds (60) is less than"),
        (_with("llm.gpu", {"count": 0}), "vllm needs llm.gpu.count"),
    ],
)
def test_rules_the_schema_cannot_express(crd: dict[str, Any], spec: dict[str, Any], needle: str) -> None:
    validate_custom_resource(crd, {**DESIGN_MINIMAL, "spec": spec})  # the API server accepts it ...
    with pytest.raises(InvalidSpecError) as err:  # ... and the operator refuses it, saying why
        parse_spec("demo", spec)
    assert needle in str(err.value)


def test_names_too_long_for_children_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match="characters"):
        parse_spec("x" * 60, DESIGN_MINIMAL["spec"])


@pytest.mark.parametrize(
    "spec",
    [
        _with("llm.engine", "tgi"),
        _with("session.minReplicas", 0),
        _with("service.type", "ExternalName"),
        _with("session.tts", {"speed": 3.0}),
        _with("llm.extraArg", ["--typo"]),
    ],
)
def test_schema_violations_fail_in_both_the_crd_and_the_model(
    crd: dict[str, Any], spec: dict[str, Any]
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(crd, {**DESIGN_MINIMAL, "spec": spec})
    with pytest.raises(InvalidSpecError):
        parse_spec("demo", spec)


def test_spec_model_round_trips_by_alias() -> None:
    spec = parse_spec(
        "demo", yaml.safe_load((REPO / "operator/examples/voicechat-eks-g5.yaml").read_text())["spec"]
    )
    assert VoiceChatSpec.model_validate(spec.model_dump(by_alias=True)) == spec
    assert spec.session.autoscaling.target_active_sessions_per_pod == 6
    assert spec.llm.max_warm_ttft_seconds == 0.5


_FILTER = re.compile(r'^(?P<list>[\w.]+)\[\?\(@\.(?P<key>\w+)=="(?P<value>[^"]+)"\)\]\.(?P<field>\w+)$')


def _jsonpath(obj: dict[str, Any], path: str) -> Any:
    """The two JSONPath shapes printer columns use here: `.a.b` and `.list[?(@.k=="v")].field`."""
    match = _FILTER.match(path.lstrip("."))
    if match:
        items = _jsonpath(obj, match["list"]) or []
        return next((i.get(match["field"]) for i in items if i.get(match["key"]) == match["value"]), None)
    node: Any = obj
    for part in path.lstrip(".").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_printer_columns_read_what_the_operator_writes(crd: dict[str, Any]) -> None:
    llm = {"metadata": {"ownerReferences": []}, "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    sessions = {"spec": {"replicas": 3}, "status": {"readyReplicas": 2}}
    status = build_status(
        generation=1,
        llm_deployment=llm,
        session_deployment=sessions,
        endpoints=None,
        problem=None,
        previous=None,
    )
    vc = {**DESIGN_MINIMAL, "metadata": {"name": "demo", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    vc["status"] = status
    jsonschema.validate(status, to_jsonschema(storage_schema(crd)["properties"]["status"]))
    (version,) = crd["spec"]["versions"]
    row = {c["name"]: _jsonpath(vc, c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert row == {
        "Ready": "True",
        "LLM-Warm": "True",
        "Sessions-Ready": 2,
        "Sessions-Desired": 3,
        "Engine": "vllm",
        "Model": "meta-llama/Llama-3.1-8B-Instruct",
        "Reason": "Ready",
        "Age": "2026-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--trust-remote-code"],
        ["--max-num-seqs", "8", "--trust-remote-code=true"],
        ["--api-key", "mine"],
        ["--port=9"],
    ],
)
def test_forbidden_extra_args_are_an_invalid_spec(args: list[str]) -> None:
    spec = {"llm": {"extraArgs": args}, "session": {"minReplicas": 1, "maxReplicas": 2}}
    with pytest.raises(InvalidSpecError, match=r"llm\.extraArgs may not contain --"):
        parse_spec("demo", spec)


def test_harmless_extra_args_pass() -> None:
    spec = {
        "llm": {"extraArgs": ["--max-num-seqs", "8", "--enforce-eager"]},
        "session": {"minReplicas": 1, "maxReplicas": 2},
    }
    assert parse_spec("demo", spec).llm.extra_args == ["--max-num-seqs", "8", "--enforce-eager"]
