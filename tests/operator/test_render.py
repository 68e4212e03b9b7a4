"""Render functions: valid Kubernetes objects for several specs, and the properties the design requires."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from voicechat_llm.settings import ENGINE_PORT, GATE_PORT, LLMSettings
from voicechat_operator import API_VERSION, KIND, kinds, rbac
from voicechat_operator.env import env_name
from voicechat_operator.generated import new_value, render_generated_secret
from voicechat_operator.render import (
    ACTIVE_SESSIONS_METRIC,
    CONFIG_HASH_ANNOTATION,
    GeneratedSecret,
    Owner,
    absent_children,
    generated_secrets,
    render_children,
    render_config_map,
    render_hpa,
    render_llm_deployment,
    render_network_policy,
    render_session_deployment,
    render_session_network_policy,
    render_session_service,
)
from voicechat_operator.spec import InvalidSpecError, VoiceChatSpec, parse_spec
from voicechat_session.metrics import ACTIVE_SESSIONS
from voicechat_session.settings import METRICS_PORT, SessionSettings
from voicechat_session.settings import PORT as SESSION_PORT

K8S_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33"]
EXAMPLES = Path(__file__).resolve().parents[2] / "operator" / "examples"
OWNER = Owner(name="demo", namespace="voice", uid="6f1c2b7e-0000-4000-8000-000000000001")
# Variables read by third-party code in the images, not by the services' settings.
OTHER_ENV = {"HOME", "HF_TOKEN"}
LABEL_KEYS = {f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "part-of", "managed-by")}


def _spec(name: str) -> VoiceChatSpec:
    return parse_spec("demo", yaml.safe_load((EXAMPLES / f"voicechat-{name}.yaml").read_text())["spec"])


SPECS = {
    "minimal": _spec("minimal"),
    "eks-g5": _spec("eks-g5"),
    "cpu": _spec("cpu"),
    "sessions-metric-only": parse_spec(
        "demo",
        {
            "llm": {"gpu": {"count": 2}},
            "session": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "autoscaling": {"targetCPUUtilizationPercent": 0, "targetActiveSessionsPerPod": 5},
            },
            "service": {"type": "NodePort", "port": 8080},
        },
    ),
}


def _by_kind(children: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [c for c in children if c["kind"] == kind and c["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("spec_name", SPECS)
def test_every_child_is_valid_for_kubernetes(spec_name: str, k8s: str) -> None:
    children = render_children(OWNER, SPECS[spec_name])
    assert len(children) >= 8
    for child in children:
        if child["kind"] == "PodMonitor":  # a CRD of the Prometheus Operator: no schema bundled
            continue
        kubernetes_validate.validate(child, k8s, strict=True)


@pytest.mark.parametrize("spec_name", SPECS)
def test_owner_reference_and_labels_on_every_child(spec_name: str) -> None:
    for child in render_children(OWNER, SPECS[spec_name]):
        meta = child["metadata"]
        assert meta["namespace"] == OWNER.namespace
        assert meta["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": OWNER.name,
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert set(meta["labels"]) >= LABEL_KEYS
        assert meta["labels"]["app.kubernetes.io/instance"] == OWNER.name
        assert kinds.kind_of(child) in kinds.CHILD_KINDS


@pytest.mark.parametrize("spec_name", SPECS)
def test_hpa_managed_deployment_has_no_replicas(spec_name: str) -> None:
    spec = SPECS[spec_name]
    session = render_session_deployment(OWNER, spec)
    hpa = render_hpa(OWNER, spec)
    assert "replicas" not in session["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo-session",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        spec.session.min_replicas,
        spec.session.max_replicas,
    )
    assert render_llm_deployment(OWNER, spec)["spec"]["replicas"] == spec.llm.replicas


def _env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


@pytest.mark.parametrize("spec_name", SPECS)
def test_environment_names_exist_in_the_services_settings(
    spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SPECS[spec_name]
    config = render_config_map(OWNER, spec)["data"]
    for deployment, settings_cls in (
        (render_llm_deployment(OWNER, spec), LLMSettings),
        (render_session_deployment(OWNER, spec), SessionSettings),
    ):
        prefix = settings_cls.model_config["env_prefix"]
        names = {e["name"] for e in _env(deployment) if e["name"] not in OTHER_ENV}
        fields = {name.removeprefix(prefix).lower() for name in names}
        assert all(n.startswith(prefix) for n in names)
        assert fields <= set(settings_cls.model_fields), fields - set(settings_cls.model_fields)
        # The values parse with the service's own settings class (JSON lists, numbers, literals).
        for entry in _env(deployment):
            if "secretKeyRef" in entry.get("valueFrom", {}):
                monkeypatch.setenv(entry["name"], "a-key")  # the engine API key, from its Secret
            elif entry["name"] not in OTHER_ENV:
                ref = entry["valueFrom"]["configMapKeyRef"]
                assert ref["name"] == "demo-config"
                monkeypatch.setenv(entry["name"], config[ref["key"]])
        settings = settings_cls()
        assert str(settings.system_prompt_file) == "/etc/voicechat/system-prompt.txt"
        for entry in _env(deployment):
            monkeypatch.delenv(entry["name"], raising=False)


def test_env_name_refuses_unknown_settings() -> None:
    assert env_name(SessionSettings, "llm_url") == "VOICECHAT_SESSION_LLM_URL"
    with pytest.raises(KeyError):
        env_name(SessionSettings, "llm_uri")


def test_session_pods_reach_the_llm_service_and_its_warmup_report() -> None:
    config = render_config_map(OWNER, SPECS["minimal"])["data"]
    assert config[env_name(SessionSettings, "llm_url")] == f"http://demo-llm.voice.svc:{ENGINE_PORT}/v1"
    assert (
        config[env_name(SessionSettings, "llm_warmup_url")] == f"http://demo-llm.voice.svc:{GATE_PORT}/warmup"
    )
    assert config["system-prompt.txt"] == "You are a helpful voice assistant."
    eks = render_config_map(OWNER, SPECS["eks-g5"])["data"]
    assert json.loads(eks[env_name(LLMSettings, "extra_args")]) == [
        "--gpu-memory-utilization",
        "0.92",
        "--max-num-seqs",
        "32",
    ]
    assert eks[env_name(SessionSettings, "max_sessions")] == "8"
    assert eks[env_name(LLMSettings, "max_warm_ttft_s")] == "0.5"


def test_llm_deployment_is_gpu_backed_probed_and_locked_down() -> None:
    spec = SPECS["minimal"]
    deployment = render_llm_deployment(OWNER, spec)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/livez", "port": "gate"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= spec.llm.startup_budget_seconds
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "gate"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {p["containerPort"] for p in container["ports"]} == {ENGINE_PORT, GATE_PORT}
    assert pod["terminationGracePeriodSeconds"] > spec.llm.drain_seconds
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["enableServiceLinks"] is False
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # the warm pod serves until its replacement is warm
    cpu = render_llm_deployment(OWNER, SPECS["cpu"])["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})
    assert "tolerations" not in cpu


def test_session_metrics_are_on_a_port_the_public_service_does_not_expose() -> None:
    spec = SPECS["eks-g5"]
    internal = env_name(SessionSettings, "internal_port")
    assert render_config_map(OWNER, spec)["data"][internal] == str(METRICS_PORT)
    assert internal in {e["name"] for e in _env(render_session_deployment(OWNER, spec))}
    service = render_session_service(OWNER, spec)["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    # ServiceMonitors reach it through a Service that never leaves the cluster, whatever the public one is.
    metrics = _by_kind(render_children(OWNER, spec), "Service", "demo-metrics")["spec"]
    assert metrics["type"] == "ClusterIP"
    assert metrics["selector"] == render_session_deployment(OWNER, spec)["spec"]["selector"]["matchLabels"]
    assert metrics["ports"] == [
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_session_deployment_drains_and_reads_readiness() -> None:
    spec = SPECS["eks-g5"]
    pod = render_session_deployment(OWNER, spec)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [
        {"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
    ]
    assert "preStop" in container["lifecycle"]
    assert pod["terminationGracePeriodSeconds"] > spec.session.drain_seconds
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}]


def test_gated_models_get_the_hugging_face_token_from_a_secret() -> None:
    env = _env(render_llm_deployment(OWNER, SPECS["eks-g5"]))
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    assert all(e["name"] != "HF_TOKEN" for e in _env(render_llm_deployment(OWNER, SPECS["minimal"])))


def test_service_type_port_and_annotations_come_from_the_spec() -> None:
    service = render_session_service(OWNER, SPECS["eks-g5"])
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 80
    assert (
        service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"]
        == "internet-facing"
    )


def test_hpa_metrics() -> None:
    assert (
        ACTIVE_SESSIONS_METRIC
        == next(iter(ACTIVE_SESSIONS.describe())).name
        == "voicechat_session_active_sessions"
    )
    cpu_only = render_hpa(OWNER, SPECS["minimal"])["spec"]
    assert [m["type"] for m in cpu_only["metrics"]] == ["Resource"]
    assert cpu_only["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert cpu_only["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    both = render_hpa(OWNER, SPECS["eks-g5"])["spec"]
    pods = next(m for m in both["metrics"] if m["type"] == "Pods")["pods"]
    assert pods == {
        "metric": {"name": ACTIVE_SESSIONS_METRIC},
        "target": {"type": "AverageValue", "averageValue": "6"},
    }
    assert both["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    sessions_only = render_hpa(OWNER, SPECS["sessions-metric-only"])["spec"]
    assert [m["type"] for m in sessions_only["metrics"]] == ["Pods"]


def test_only_session_pods_and_monitoring_reach_the_llm() -> None:
    policy = render_network_policy(OWNER, SPECS["minimal"])["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "llm"
    session_rule, monitoring_rule = policy["ingress"]
    assert session_rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "voicechat",
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": "session",
                }
            }
        }
    ]
    assert monitoring_rule["ports"] == [{"protocol": "TCP", "port": GATE_PORT}]


def test_pod_monitor_only_when_enabled() -> None:
    kinds_minimal = {c["kind"] for c in render_children(OWNER, SPECS["minimal"])}
    assert "PodMonitor" not in kinds_minimal
    assert (kinds.POD_MONITOR, "demo") in absent_children(OWNER, SPECS["minimal"])
    monitor = _by_kind(render_children(OWNER, SPECS["eks-g5"]), "PodMonitor", "demo")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"metrics", "gate"}
    assert kinds.POD_MONITOR not in {kind for kind, _ in absent_children(OWNER, SPECS["eks-g5"])}


def _template_hashes(spec: VoiceChatSpec) -> tuple[str, str]:
    llm = render_llm_deployment(OWNER, spec)["spec"]["template"]["metadata"]["annotations"]
    session = render_session_deployment(OWNER, spec)["spec"]["template"]["metadata"]["annotations"]
    return llm[CONFIG_HASH_ANNOTATION], session[CONFIG_HASH_ANNOTATION]


def test_config_hash_rolls_exactly_the_pods_whose_configuration_changed() -> None:
    base = SPECS["minimal"].model_dump(by_alias=True)
    llm0, session0 = _template_hashes(SPECS["minimal"])
    prompt = copy.deepcopy(base)
    prompt["llm"]["systemPrompt"] = "Speak like a pirate."
    llm1, session1 = _template_hashes(VoiceChatSpec.model_validate(prompt))
    assert llm1 != llm0
    assert session1 != session0
    voice = copy.deepcopy(base)
    voice["session"]["tts"]["voice"] = "af_heart"
    llm2, session2 = _template_hashes(VoiceChatSpec.model_validate(voice))
    assert llm2 == llm0
    assert session2 != session0


def test_rendering_is_deterministic() -> None:
    assert render_children(OWNER, SPECS["eks-g5"]) == render_children(OWNER, SPECS["eks-g5"])


def test_rbac_covers_every_call_the_operator_makes() -> None:
    rules = rbac.required_rules()
    for kind in kinds.CHILD_KINDS:
        for verb in ("get", "list", "watch", "create", "patch"):
            assert rbac.allows(rules, kind.group, kind.plural, verb), (kind.plural, verb)
        assert rbac.allows(rules, kind.group, kind.plural, "delete") == kind.optional
    owner = kinds.VOICECHAT
    for verb in ("get", "list", "watch", "patch"):
        assert rbac.allows(rules, owner.group, owner.plural, verb)
    assert rbac.allows(rules, owner.group, f"{owner.plural}/status", "patch")
    assert rbac.allows(rules, owner.group, f"{owner.plural}/finalizers", "update")
    assert rbac.allows(rules, "", "events", "create")
    assert rbac.allows(rules, "kopf.dev", "clusterkopfpeerings", "patch")
    assert rbac.allows(rules, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    # Least privilege: it reads the Secrets it generates by name, and can never list or watch Secrets.
    assert not rbac.allows(rules, "", "secrets", "list")
    assert not rbac.allows(rules, "", "secrets", "watch")
    for rule in rules:
        kubernetes_validate.validate(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "x"},
                "rules": [rule],
            },
            "1.33",
            strict=True,
        )


def test_engine_picks_its_image_and_model_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A llama.cpp VoiceChat without a model runs the CPU image's embedded GGUF, never the vLLM model id."""
    cpu, gpu = _spec("cpu"), SPECS["minimal"]
    cpu_container = render_llm_deployment(OWNER, cpu)["spec"]["template"]["spec"]["containers"][0]
    gpu_container = render_llm_deployment(OWNER, gpu)["spec"]["template"]["spec"]["containers"][0]
    assert cpu_container["image"].rsplit("/", 1)[1].startswith("voicechat-llm-cpu:")
    assert gpu_container["image"].rsplit("/", 1)[1].startswith("voicechat-llm:")
    config = render_config_map(OWNER, cpu)["data"]
    for entry in _env(render_llm_deployment(OWNER, cpu)):
        if "secretKeyRef" in entry.get("valueFrom", {}):
            monkeypatch.setenv(entry["name"], "a-key")
        elif entry["name"] not in OTHER_ENV:
            monkeypatch.setenv(entry["name"], config[entry["valueFrom"]["configMapKeyRef"]["key"]])
    settings = LLMSettings()
    assert settings.engine == "llamacpp"
    assert settings.model is None  # the LLM service resolves the embedded SmolLM2 file


def _secret_env(deployment: dict[str, Any], variable: str) -> dict[str, Any]:
    entry = next(e for e in _env(deployment) if e["name"] == variable)
    ref: dict[str, Any] = entry["valueFrom"]["secretKeyRef"]
    return ref


@pytest.mark.parametrize("spec_name", SPECS)
def test_both_pods_get_the_engine_api_key_from_one_secret(spec_name: str) -> None:
    spec = SPECS[spec_name]
    llm = _secret_env(render_llm_deployment(OWNER, spec), env_name(LLMSettings, "api_key"))
    session = _secret_env(render_session_deployment(OWNER, spec), env_name(SessionSettings, "llm_api_key"))
    assert llm == session == {"name": "demo-llm-api-key", "key": "api-key"}
    assert "optional" not in llm  # a pod without the key does not start
    (generated,) = [g for g in generated_secrets(OWNER, spec) if g.component == "llm"]
    assert generated == GeneratedSecret("demo-llm-api-key", ("api-key",), "llm")
    # Never in the ConfigMap, whose values anyone who may read ConfigMaps sees.
    assert not any("API_KEY" in key for key in render_config_map(OWNER, spec)["data"])


def test_a_referenced_api_key_secret_is_used_and_not_generated() -> None:
    raw = {"llm": {"apiKeySecret": {"name": "mine"}}, "session": {"minReplicas": 1, "maxReplicas": 2}}
    spec = parse_spec("demo", raw)
    llm = _secret_env(render_llm_deployment(OWNER, spec), env_name(LLMSettings, "api_key"))
    assert llm == {"name": "mine", "key": "api-key"}
    assert [g for g in generated_secrets(OWNER, spec) if g.component == "llm"] == []


def test_generated_secret_object() -> None:
    secret = render_generated_secret(
        OWNER, GeneratedSecret("demo-x", ("a", "b"), "session"), {"a": "1", "b": "2"}
    )
    assert secret["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "session"
    assert secret["data"] == {"a": "MQ==", "b": "Mg=="}
    assert len(new_value()) >= 43  # 32 random bytes
    assert new_value() != new_value()


@pytest.mark.parametrize("spec_name", SPECS)
def test_every_scratch_volume_has_a_size_limit(spec_name: str) -> None:
    for deployment in (
        render_llm_deployment(OWNER, SPECS[spec_name]),
        render_session_deployment(OWNER, SPECS[spec_name]),
    ):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        empty_dirs = [v for v in volumes if "emptyDir" in v]
        assert len(empty_dirs) >= 2
        for volume in empty_dirs:
            assert volume["emptyDir"]["sizeLimit"], volume


def test_session_network_policy_lets_clients_in_and_only_the_llm_and_dns_out() -> None:
    policy = render_session_network_policy(OWNER, SPECS["minimal"])
    spec = policy["spec"]
    assert policy["metadata"]["name"] == "demo-session"
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "session"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    public, monitoring = spec["ingress"]
    assert public == {"ports": [{"protocol": "TCP", "port": SESSION_PORT}]}
    assert monitoring["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert monitoring["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    llm, dns = spec["egress"]
    assert llm["to"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "voicechat", "app.kubernetes.io/instance": "demo", "app.kubernetes.io/component": "llm"
    }}}]  # fmt: skip
    assert {p["port"] for p in llm["ports"]} == {ENGINE_PORT, GATE_PORT}
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert "ipBlock" not in json.dumps(spec)  # no internet, no cloud metadata endpoint


def test_session_network_policy_opens_https_only_for_a_hub_stt_model() -> None:
    raw = {
        "session": {"minReplicas": 1, "maxReplicas": 2, "stt": {"model": "Systran/faster-whisper-small.en"}}
    }
    egress = render_session_network_policy(OWNER, parse_spec("demo", {"llm": {}, **raw}))["spec"]["egress"]
    assert egress[-1] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    raw["session"]["stt"]["model"] = "/models/whisper"
    egress = render_session_network_policy(OWNER, parse_spec("demo", {"llm": {}, **raw}))["spec"]["egress"]
    assert len(egress) == 2


REMOTE_SPEECH = {
    "minReplicas": 1,
    "maxReplicas": 2,
    "stt": {
        "engine": "remote",
        "url": "https://speech.example.com/v1",
        "apiKeySecret": {"name": "speech-key"},
    },
    "tts": {
        "engine": "remote",
        "url": "http://kokoro-fastapi.speech.svc:8880/v1",
        "model": "kokoro",
        "voice": "af_heart",
    },
}


def test_remote_speech_servers_reach_the_session_settings_and_the_network_policy() -> None:
    spec = parse_spec("demo", {"llm": {}, "session": REMOTE_SPEECH})
    config = render_config_map(OWNER, spec)["data"]
    setting = {name: config.get(env_name(SessionSettings, name)) for name in SessionSettings.model_fields}
    assert (setting["stt_backend"], setting["stt_url"]) == ("remote", "https://speech.example.com/v1")
    assert (setting["tts_backend"], setting["tts_url"], setting["tts_model"]) == (
        "remote",
        "http://kokoro-fastapi.speech.svc:8880/v1",
        "kokoro",
    )
    # The settings the pod will read are valid for the session service (one source of truth for the names).
    SessionSettings.model_validate(
        {k: v for k, v in setting.items() if v is not None and k.startswith(("stt_", "tts_"))}
    )
    env = _env(render_session_deployment(OWNER, spec))
    assert {"name": env_name(SessionSettings, "stt_api_key"), "valueFrom": {"secretKeyRef": {"name": "speech-key", "key": "api-key"}}} in env  # fmt: skip
    assert all(e["name"] != env_name(SessionSettings, "tts_api_key") for e in env)
    egress = render_session_network_policy(OWNER, spec)["spec"]["egress"]
    (outside,) = [rule for rule in egress if "ipBlock" in json.dumps(rule)]
    assert [p["port"] for p in outside["ports"]] == [443, 8880]
    # The embedded engines: nothing of the sort.
    local = render_config_map(OWNER, SPECS["minimal"])["data"]
    assert local[env_name(SessionSettings, "stt_backend")] == "faster-whisper"
    assert env_name(SessionSettings, "tts_url") not in local


@pytest.mark.parametrize(
    ("session", "problem"),
    [
        ({"tts": {"engine": "remote"}}, "session.tts.engine remote needs session.tts.url"),
        ({"stt": {"engine": "remote"}}, "session.stt.engine remote needs session.stt.url"),
        ({"stt": {"url": "http://x:1/v1"}}, "only used with session.stt.engine remote"),
        ({"tts": {"model": "kokoro"}}, "only used with session.tts.engine remote"),
        ({"tts": {"engine": "remote", "url": "ftp://x/v1"}}, "spec.session.tts.url"),
    ],
)
def test_bad_remote_speech_configuration_is_an_invalid_spec(session: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(problem)):
        parse_spec("demo", {"llm": {}, "session": {"minReplicas": 1, "maxReplicas": 2, **session}})
