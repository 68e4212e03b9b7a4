"""Pure render functions: a VoiceChat spec in, the Kubernetes objects of its children out.

Nothing here talks to the API. Every child carries the owner reference and the ``app.kubernetes.io/*`` labels;
environment variable names come from the services' settings classes through :func:`env_name`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from voicechat_common.contracts import ACTIVE_SESSIONS_METRIC
from voicechat_llm.settings import ENGINE_PORT, GATE_PORT, LLMSettings
from voicechat_operator import API_VERSION, KIND, OPERATOR_NAME, __version__, kinds
from voicechat_operator.env import env_name
from voicechat_operator.spec import VoiceChatSpec, is_hosted
from voicechat_session.settings import METRICS_PORT as SESSION_METRICS_PORT
from voicechat_session.settings import PORT as SESSION_PORT
from voicechat_session.settings import SessionSettings

Obj = dict[str, Any]

APP_NAME = "voicechat"
LLM = "llm"
SESSION = "session"
CONFIG = "config"
METRICS = "metrics"  # the session pods' metrics Service (cluster-internal, for ServiceMonitors)
DEFAULT_IMAGE_REPOSITORY = "ghcr.io/voicechat"
CONFIG_HASH_ANNOTATION = "voicechat.io/config-hash"
PROMPT_KEY = "system-prompt.txt"
HF_TOKEN_ENV = "HF_TOKEN"
API_KEY_SECRET_SUFFIX = "-llm-api-key"
API_KEY_SECRET_KEY = "api-key"
CONFIG_MOUNT = "/etc/voicechat"
PROMPT_PATH = f"{CONFIG_MOUNT}/{PROMPT_KEY}"
# Writable scratch space under a read-only root filesystem: HOME (model caches) and /tmp.
CACHE_MOUNT = "/var/cache/voicechat"
RUN_AS = 10001
# preStop pause: lets endpoint controllers and load balancers stop sending new traffic before SIGTERM.
PRESTOP_SECONDS = 5
# The resume-key Secret, mounted whole: `key`, and `previous-key` only during a rotation.
RESUME_MOUNT = "/var/run/voicechat/resume"
RESUME_SECRET_SUFFIX = "-session-resume"
GENERATED_RESUME_KEY = "key"
AUTH_SECRET_SUFFIX = "-session-auth"
GENERATED_AUTH_KEY = "key"
STARTUP_PERIOD_SECONDS = 10


@dataclass(frozen=True)
class Owner:
    """The VoiceChat that owns the children (its uid comes from the API server)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Obj:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


# --- names and labels ---------------------------------------------------------------------------------------


def llm_name(owner: Owner) -> str:
    return f"{owner.name}-{LLM}"


def session_name(owner: Owner) -> str:
    return f"{owner.name}-{SESSION}"


def metrics_service_name(owner: Owner) -> str:
    return f"{owner.name}-{METRICS}"


def config_name(owner: Owner) -> str:
    return f"{owner.name}-{CONFIG}"


def resume_secret_name(owner: Owner, spec: VoiceChatSpec) -> str:
    """The Secret sealing resume tokens: the one the spec names, else the generated NAME-session-resume."""
    ref = spec.session.resume_key_secret
    return ref.name if ref is not None else f"{owner.name}{RESUME_SECRET_SUFFIX}"


def _resume_key_files(spec: VoiceChatSpec) -> tuple[str, str]:
    ref = spec.session.resume_key_secret
    key, previous = (ref.key, ref.previous_key) if ref is not None else (GENERATED_RESUME_KEY, "previous-key")
    return f"{RESUME_MOUNT}/{key}", f"{RESUME_MOUNT}/{previous}"


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
    }


def pod_labels(owner: Owner, component: str) -> dict[str, str]:
    # No version label on pod templates: upgrading the operator alone must not roll (and re-warm) the pods.
    return {
        **selector_labels(owner, component),
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": OPERATOR_NAME,
    }


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {**pod_labels(owner, component), "app.kubernetes.io/version": __version__}


# Children are found (watches, RBAC-free filtering) by this label pair.
MANAGED_LABELS = {"app.kubernetes.io/managed-by": OPERATOR_NAME, "app.kubernetes.io/part-of": APP_NAME}


def _meta(owner: Owner, name: str, component: str, annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _object(kind: kinds.Kind, meta: Obj, **fields: Any) -> Obj:
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta, **fields}


def bedrock_endpoint(spec: VoiceChatSpec) -> str:
    """The Bedrock Runtime endpoint the session pods call: the override, else the region's public one."""
    bedrock = spec.llm.bedrock
    if bedrock is None or bedrock.region is None:
        raise ValueError("llm.bedrock.region is required for engine bedrock")  # parse_spec refuses it first
    return bedrock.endpoint_url or f"https://bedrock-runtime.{bedrock.region}.amazonaws.com"


def endpoints(owner: Owner, spec: VoiceChatSpec | None = None) -> dict[str, str]:
    """URLs of the LLM (OpenAI-compatible base URL, warm-up report of in-cluster engines) and the sessions."""
    session = f"http://{session_name(owner)}.{owner.namespace}.svc"
    if spec is not None and spec.llm.engine == "external" and spec.llm.url:
        return {"llm": spec.llm.url, "session": session}
    if spec is not None and spec.llm.engine == "bedrock":
        return {"llm": bedrock_endpoint(spec), "session": session}
    llm_host = f"{llm_name(owner)}.{owner.namespace}.svc"
    return {
        "llm": f"http://{llm_host}:{ENGINE_PORT}/v1",
        "warmup": f"http://{llm_host}:{GATE_PORT}/warmup",
        "session": session,
    }


# --- configuration ------------------------------------------------------------------------------------------


def llm_settings(owner: Owner, spec: VoiceChatSpec) -> dict[str, str]:
    """LLM service settings (environment) for this spec, keyed by variable name."""
    llm = spec.llm
    values: dict[str, Any] = {
        "engine": llm.engine,
        "engine_port": ENGINE_PORT,
        "gate_port": GATE_PORT,
        "system_prompt_file": PROMPT_PATH,
        "max_model_len": llm.max_model_len,
        "extra_args": json.dumps(llm.extra_args),
        "startup_timeout_s": llm.warmup_timeout_seconds,
        "drain_timeout_s": llm.drain_seconds,
        "log_format": "json",
    }
    if llm.engine == "vllm" and llm.gpu.count > 0:
        values["tensor_parallel_size"] = llm.gpu.count
    if llm.model:
        values["model"] = llm.model
    if llm.served_model_name:
        values["served_model_name"] = llm.served_model_name
    if llm.max_warm_ttft_seconds is not None:
        values["max_warm_ttft_s"] = llm.max_warm_ttft_seconds
    return {env_name(LLMSettings, key): str(value) for key, value in values.items()}


def session_settings(owner: Owner, spec: VoiceChatSpec) -> dict[str, str]:
    """Session service settings (environment) for this spec, keyed by variable name."""
    session, urls = spec.session, endpoints(owner, spec)
    values: dict[str, Any] = {
        "port": SESSION_PORT,
        # The public Service fronts SESSION_PORT only: metrics stay inside the cluster.
        "internal_port": SESSION_METRICS_PORT,
        "system_prompt_file": PROMPT_PATH,
        "max_sessions": session.max_sessions_per_pod,
        "stt_device": session.stt.device,
        "stt_compute_type": session.stt.compute_type,
        "stt_language": session.stt.language,
        "stt_backend": session.stt.engine,
        "tts_backend": session.tts.engine,
        "tts_voice": session.tts.voice,
        "tts_speed": session.tts.speed,
        "tts_device": session.tts.device,
        "drain_grace_s": session.drain_seconds,
        "resume_key_file": _resume_key_files(spec)[0],
        "resume_previous_key_file": _resume_key_files(spec)[1],
        "model_cache_dir": f"{CACHE_MOUNT}/models",
        "log_format": "json",
    }
    if session.stt.model:
        values["stt_model"] = session.stt.model
    if session.stt.url:
        values["stt_url"] = session.stt.url
    if session.tts.url:
        values["tts_url"] = session.tts.url
    if session.tts.model:
        values["tts_model"] = session.tts.model
    llm = spec.llm
    if llm.engine == "external":
        # No warm-up report to wait for: the operator's endpoint check stands for it (LLMReady).
        values |= {"llm_provider": "openai", "llm_url": urls["llm"], "llm_model": llm.model}
    elif llm.engine == "bedrock" and llm.bedrock is not None:
        values |= {"llm_provider": "bedrock", "llm_model": llm.model, "bedrock_region": llm.bedrock.region}
        if llm.bedrock.endpoint_url:
            values["bedrock_endpoint_url"] = llm.bedrock.endpoint_url
    else:
        # In-cluster engines leave llm_provider at its default (openai), so upgrading the operator does not
        # change these pods' configuration hash and roll them.
        values |= {"llm_url": urls["llm"], "llm_warmup_url": urls["warmup"]}
        if llm.served_model_name:
            values["llm_model"] = llm.served_model_name
    return {env_name(SessionSettings, key): str(value) for key, value in values.items()}


def _hash(*parts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def render_config_map(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """The system prompt file plus every service setting, one key per environment variable."""
    llm = {} if is_hosted(spec) else llm_settings(owner, spec)  # no LLM pods read them
    data = {PROMPT_KEY: spec.llm.system_prompt, **llm, **session_settings(owner, spec)}
    return _object(kinds.CONFIG_MAP, _meta(owner, config_name(owner), CONFIG), data=data)


def config_hash(owner: Owner, spec: VoiceChatSpec, component: str) -> str:
    """Hash of what one component reads from the ConfigMap: a change rolls only that component's pods."""
    prompt = {PROMPT_KEY: spec.llm.system_prompt}
    settings = llm_settings(owner, spec) if component == LLM else session_settings(owner, spec)
    return _hash(prompt, settings)


# --- pods ---------------------------------------------------------------------------------------------------


def _env_from_config(owner: Owner, settings: dict[str, str]) -> list[Obj]:
    return [
        {"name": key, "valueFrom": {"configMapKeyRef": {"name": config_name(owner), "key": key}}}
        for key in sorted(settings)
    ]


def _container_security() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Scratch space is bounded: a pod writing past its limit is evicted instead of filling the node's disk.
# The LLM cache holds the downloaded weights (Llama-3.1-8B in bf16: 16 GB) and compile caches.
CACHE_SIZE_LIMIT = {LLM: "64Gi", SESSION: "4Gi"}
TMP_SIZE_LIMIT = "2Gi"


def _volumes(owner: Owner, component: str, extra: list[Obj] | None = None) -> list[Obj]:
    return [
        {
            "name": "config",
            "configMap": {"name": config_name(owner), "items": [{"key": PROMPT_KEY, "path": PROMPT_KEY}]},
        },
        {"name": "cache", "emptyDir": {"sizeLimit": CACHE_SIZE_LIMIT[component]}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        *(extra or []),
    ]


def _mounts(extra: list[Obj] | None = None) -> list[Obj]:
    return [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
        *(extra or []),
    ]


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 3) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _pod_spec(
    spec: VoiceChatSpec,
    container: Obj,
    volumes: list[Obj],
    grace: int,
    scheduling: Any,
    service_account: str | None = None,
) -> Obj:
    pod: Obj = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": _pod_security(),
        "terminationGracePeriodSeconds": grace,
        # Service links would inject e.g. VOICECHAT_SESSION_PORT=tcp://… for a VoiceChat named "voicechat",
        # which collides with the services' own settings.
        "enableServiceLinks": False,
        # No API token in the pods: they never call the Kubernetes API. IRSA's webhook and EKS Pod Identity
        # mount their own projected token / credentials for AWS, which this setting does not affect.
        "automountServiceAccountToken": False,
    }
    if service_account is not None:
        pod["serviceAccountName"] = service_account
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod["tolerations"] = [dict(t) for t in scheduling.tolerations]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def _hugging_face_token(spec: VoiceChatSpec) -> list[Obj]:
    secret = spec.llm.hugging_face_token_secret
    if secret is None:
        return []
    # HF_TOKEN is read by huggingface_hub inside vLLM when it downloads a gated model.
    return [{"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}]


def llm_api_key_ref(owner: Owner, spec: VoiceChatSpec) -> tuple[str, str] | None:
    """(Secret name, key) of the engine API key: the spec's reference, or the Secret the operator generates.

    None when the LLM takes no key: bedrock (the pods' identity signs requests) and an external server without
    llm.apiKeySecret (Ollama, LM Studio). A key for an external provider is never generated.
    """
    ref = spec.llm.api_key_secret
    if spec.llm.engine == "bedrock":
        return None
    if ref is not None:
        return ref.name, ref.key
    if spec.llm.engine == "external":
        return None
    return f"{owner.name}{API_KEY_SECRET_SUFFIX}", API_KEY_SECRET_KEY


@dataclass(frozen=True)
class GeneratedSecret:
    """A Secret of random values the operator generates once (see :mod:`voicechat_operator.generated`)."""

    name: str
    keys: tuple[str, ...]
    component: str


def generated_secrets(owner: Owner, spec: VoiceChatSpec) -> list[GeneratedSecret]:
    """Secrets the operator must generate for this spec (none for what the spec references)."""
    wanted = []
    if spec.llm.api_key_secret is None and (ref := llm_api_key_ref(owner, spec)) is not None:
        name, key = ref
        wanted.append(GeneratedSecret(name, (key,), LLM))
    if spec.session.resume_key_secret is None:
        # Never rotated by the operator: a new key would orphan every live conversation's resume token.
        wanted.append(GeneratedSecret(resume_secret_name(owner, spec), (GENERATED_RESUME_KEY,), SESSION))
    auth = spec.session.auth
    if not auth.allow_unauthenticated and auth.key_secret is None:
        # Never rotated by the operator: the app's backend mints tokens with this same key.
        name, key = f"{owner.name}{AUTH_SECRET_SUFFIX}", GENERATED_AUTH_KEY
        wanted.append(GeneratedSecret(name, (key,), SESSION))
    return wanted


def session_auth_key_ref(owner: Owner, spec: VoiceChatSpec) -> tuple[str, str] | None:
    """(Secret name, key) of the access-token key, or None when the spec allows unauthenticated sessions."""
    auth = spec.session.auth
    if auth.allow_unauthenticated:
        return None
    if auth.key_secret is not None:
        return auth.key_secret.name, auth.key_secret.key
    return f"{owner.name}{AUTH_SECRET_SUFFIX}", GENERATED_AUTH_KEY


def _session_auth_env(owner: Owner, spec: VoiceChatSpec) -> list[Obj]:
    # Session pods bind 0.0.0.0: the service refuses to start there without a key or the explicit opt-out.
    ref = session_auth_key_ref(owner, spec)
    if ref is None:
        return [{"name": env_name(SessionSettings, "allow_unauthenticated"), "value": "true"}]
    name, key = ref
    # Required (not optional): a pod without its key must not start.
    secret_ref = {"secretKeyRef": {"name": name, "key": key}}
    return [{"name": env_name(SessionSettings, "auth_key"), "valueFrom": secret_ref}]


def _speech_server_env(spec: VoiceChatSpec) -> list[Obj]:
    """Remote speech servers' API keys, from the Secrets the spec names (required: no key, no start)."""
    env = []
    for stage, speech in (("stt", spec.session.stt), ("tts", spec.session.tts)):
        if speech.api_key_secret is not None:
            ref = {"name": speech.api_key_secret.name, "key": speech.api_key_secret.key}
            env.append(
                {"name": env_name(SessionSettings, f"{stage}_api_key"), "valueFrom": {"secretKeyRef": ref}}
            )
    return env


def _api_key_env(owner: Owner, spec: VoiceChatSpec, variable: str) -> list[Obj]:
    # Required (not optional): a pod without the key must not start, rather than run open or fail every call.
    ref = llm_api_key_ref(owner, spec)
    if ref is None:
        return []
    name, key = ref
    return [{"name": variable, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}]


def _pod_template(owner: Owner, spec: VoiceChatSpec, component: str, pod: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's pod template; the config hash rolls the pods when their own settings change."""
    return {
        "metadata": {
            "labels": pod_labels(owner, component),
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash(owner, spec, component)},
        },
        "spec": pod,
    }


def _image(explicit: str | None, component: str) -> str:
    return explicit or f"{DEFAULT_IMAGE_REPOSITORY}/voicechat-{component}:{__version__}"


def render_llm_deployment(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """The warm-gated LLM: ready only after the gate's warm-up; a startup probe budget covers model loading."""
    llm = spec.llm
    resources: Obj = {"requests": dict(llm.resources.requests), "limits": dict(llm.resources.limits)}
    if llm.gpu.count > 0:
        resources["limits"][llm.gpu.resource_name] = str(llm.gpu.count)
    resources = {k: v for k, v in resources.items() if v}
    container: Obj = {
        "name": LLM,
        # The vLLM image (services/llm/Dockerfile) or the CPU one (services/llm/Dockerfile.cpu).
        "image": _image(llm.image, LLM if llm.engine == "vllm" else f"{LLM}-cpu"),
        "imagePullPolicy": llm.image_pull_policy,
        "command": ["voicechat-llm"],
        "ports": [
            {"name": "engine", "containerPort": ENGINE_PORT, "protocol": "TCP"},
            {"name": "gate", "containerPort": GATE_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "HOME", "value": CACHE_MOUNT},
            *_hugging_face_token(spec),
            *_api_key_env(owner, spec, env_name(LLMSettings, "api_key")),
            *_env_from_config(owner, llm_settings(owner, spec)),
        ],
        "startupProbe": _http_probe(
            "/livez",
            "gate",
            STARTUP_PERIOD_SECONDS,
            math.ceil(llm.startup_budget_seconds / STARTUP_PERIOD_SECONDS),
            5,
        ),
        "readinessProbe": _http_probe("/readyz", "gate", 5, 2),
        "livenessProbe": _http_probe("/livez", "gate", 15, 4, 5),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": resources,
        "securityContext": _container_security(),
        "volumeMounts": _mounts([{"name": "dshm", "mountPath": "/dev/shm"}]),
    }
    # vLLM's workers share tensors through /dev/shm; the container runtime's default is 64 MiB.
    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
    pod = _pod_spec(
        spec, container, _volumes(owner, LLM, [shm]), llm.drain_seconds + PRESTOP_SECONDS + 10, llm
    )
    template = _pod_template(owner, spec, LLM, pod)
    return _object(
        kinds.DEPLOYMENT,
        _meta(owner, llm_name(owner), LLM),
        spec={
            "replicas": llm.replicas,
            "selector": {"matchLabels": selector_labels(owner, LLM)},
            # A new LLM pod serves only once warm; the old one keeps serving until then.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": llm.startup_budget_seconds + 300,
            "revisionHistoryLimit": 5,
            "template": template,
        },
    )


def render_llm_service(owner: Owner, spec: VoiceChatSpec) -> Obj:
    return _object(
        kinds.SERVICE,
        _meta(owner, llm_name(owner), LLM),
        spec={
            "type": "ClusterIP",
            "selector": selector_labels(owner, LLM),
            "ports": [
                {"name": "engine", "port": ENGINE_PORT, "targetPort": "engine", "protocol": "TCP"},
                {"name": "gate", "port": GATE_PORT, "targetPort": "gate", "protocol": "TCP"},
            ],
        },
    )


def render_session_deployment(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """Session pods. No ``replicas``: the HorizontalPodAutoscaler owns that field."""
    session = spec.session
    container: Obj = {
        "name": SESSION,
        "image": _image(session.image, SESSION),
        "imagePullPolicy": session.image_pull_policy,
        "command": ["voicechat-session"],
        "ports": [
            {"name": "http", "containerPort": SESSION_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": SESSION_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "HOME", "value": CACHE_MOUNT},
            *_api_key_env(owner, spec, env_name(SessionSettings, "llm_api_key")),
            *_session_auth_env(owner, spec),
            *_speech_server_env(spec),
            *_env_from_config(owner, session_settings(owner, spec)),
        ],
        "startupProbe": _http_probe("/livez", "http", 5, 60),
        # /readyz turns 503 at maxSessionsPerPod and while draining: the pod leaves the Service endpoints.
        "readinessProbe": _http_probe("/readyz", "http", 5, 1),
        "livenessProbe": _http_probe("/livez", "http", 15, 4, 5),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": {k: dict(v) for k, v in session.resources.model_dump().items() if v},
        "securityContext": _container_security(),
        "volumeMounts": _mounts([{"name": "resume-key", "mountPath": RESUME_MOUNT, "readOnly": True}]),
    }
    # The whole Secret: its previous key appears (and goes) with a rotation without a change here.
    resume_key = {
        "name": "resume-key",
        "secret": {"secretName": resume_secret_name(owner, spec), "defaultMode": 0o440},
    }
    grace = session.drain_seconds + PRESTOP_SECONDS + 10
    account = session_name(owner) if wants_service_account(spec) else None
    pod = _pod_spec(spec, container, _volumes(owner, SESSION, [resume_key]), grace, session, account)
    template = _pod_template(owner, spec, SESSION, pod)
    return _object(
        kinds.DEPLOYMENT,
        _meta(owner, session_name(owner), SESSION),
        spec={
            "selector": {"matchLabels": selector_labels(owner, SESSION)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "revisionHistoryLimit": 5,
            "template": template,
        },
    )


def wants_service_account(spec: VoiceChatSpec) -> bool:
    """Session pods get NAME-session when the spec asks, and always for bedrock (the identity AWS sees)."""
    return spec.session.service_account is not None or spec.llm.engine == "bedrock"


def render_service_account(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """The session pods' identity: IRSA's role annotation, or the name an EKS Pod Identity association uses."""
    account = spec.session.service_account
    annotations = dict(account.annotations) if account is not None else None
    return _object(
        kinds.SERVICE_ACCOUNT,
        _meta(owner, session_name(owner), SESSION, annotations),
        automountServiceAccountToken=False,
    )


def render_session_service(owner: Owner, spec: VoiceChatSpec) -> Obj:
    service = spec.service
    return _object(
        kinds.SERVICE,
        _meta(owner, session_name(owner), SESSION, service.annotations),
        spec={
            "type": service.type,
            "selector": selector_labels(owner, SESSION),
            "ports": [{"name": "http", "port": service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    )


def render_metrics_service(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """ClusterIP Service of the session pods' metrics port, for ServiceMonitors.

    The session Service may be a load balancer facing the internet; every port it has is public, so the
    metrics port gets a Service of its own that never leaves the cluster.
    """
    return _object(
        kinds.SERVICE,
        _meta(owner, metrics_service_name(owner), METRICS),
        spec={
            "type": "ClusterIP",
            "selector": selector_labels(owner, SESSION),
            "ports": [
                {"name": "metrics", "port": SESSION_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
            ],
        },
    )


def render_hpa(owner: Owner, spec: VoiceChatSpec) -> Obj:
    session, scaling = spec.session, spec.session.autoscaling
    metrics: list[Obj] = []
    if scaling.target_cpu_utilization_percent:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": scaling.target_cpu_utilization_percent,
                    },
                },
            }
        )
    if scaling.target_active_sessions_per_pod:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": ACTIVE_SESSIONS_METRIC},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(scaling.target_active_sessions_per_pod),
                    },
                },
            }
        )
    return _object(
        kinds.HPA,
        _meta(owner, session_name(owner), SESSION),
        spec={
            "scaleTargetRef": {
                "apiVersion": kinds.DEPLOYMENT.api_version,
                "kind": "Deployment",
                "name": session_name(owner),
            },
            "minReplicas": session.min_replicas,
            "maxReplicas": session.max_replicas,
            "metrics": metrics,
            "behavior": {
                # Scale up fast (a new pod needs a while to load its models); scale down slowly, one pod a
                # minute, after load stayed low for the stabilization window (each pod drains its sessions).
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15},
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds,
                    "selectPolicy": "Min",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
            },
        },
    )


def render_pdb(owner: Owner, spec: VoiceChatSpec) -> Obj:
    return _object(
        kinds.PDB,
        _meta(owner, session_name(owner), SESSION),
        spec={"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner, SESSION)}},
    )


def render_network_policy(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """Only this VoiceChat's session pods reach the LLM; Prometheus' namespace may scrape the gate."""
    return _object(
        kinds.NETWORK_POLICY,
        _meta(owner, llm_name(owner), LLM),
        spec={
            "podSelector": {"matchLabels": selector_labels(owner, LLM)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(owner, SESSION)}}],
                    "ports": [
                        {"protocol": "TCP", "port": ENGINE_PORT},
                        {"protocol": "TCP", "port": GATE_PORT},
                    ],
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": spec.monitoring.namespace}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": GATE_PORT}],
                },
            ],
        },
    )


# Cluster DNS (CoreDNS keeps the kube-dns label on EKS and kubeadm clusters).
DNS_POD_LABELS = {"k8s-app": "kube-dns"}


def _stt_model_downloads(spec: VoiceChatSpec) -> bool:
    """A hub model name (not a path in the image or a volume) is fetched from the internet when a pod starts."""
    stt = spec.session.stt
    return stt.engine == "faster-whisper" and stt.model is not None and not stt.model.startswith("/")


# Link-local and the cloud's metadata ranges (instance metadata, the EKS Pod Identity agent) stay closed even
# where a hosted LLM opens a port to any address; bedrock opens the agent explicitly.
METADATA_CIDRS = (["169.254.0.0/16"], ["fe80::/10", "fd00:ec2::/32"])
# The EKS Pod Identity agent (a node-local link address, port 80) hands out the pods' AWS credentials.
POD_IDENTITY_AGENT = ({"ipBlock": {"cidr": "169.254.170.23/32"}}, {"ipBlock": {"cidr": "fd00:ec2::23/128"}})


def url_port(url: str) -> int:
    """The TCP port of ``url`` (its explicit port, else 443 for https and 80 for http)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def in_cluster_host(url: str) -> bool:
    """Whether ``url`` may name a Service of this cluster (``svc``, ``svc.ns``, ``….svc[.cluster.local]``).

    A two-label name (``svc.ns``) cannot be told from a domain such as ``example.com``; counting it in only
    loosens the policy (pods of any namespace on that port), it never blocks the LLM.
    """
    host = urlsplit(url).hostname or ""
    return "." not in host or host.endswith((".svc", ".svc.cluster.local")) or host.count(".") == 1


def _anywhere(in_cluster: bool = False) -> list[Obj]:
    # A hosted LLM has no stable address (a provider's anycast or CDN IPs, a gateway, another cluster's load
    # balancer): any IPv4/IPv6 address but the metadata service. A Service of this cluster (an Ollama in
    # another namespace) also gets pods of any namespace, since CNIs disagree on whether ipBlock matches pod IPs;
    # only then, so a provider's port does not open every pod listening on it.
    peers: list[Obj] = [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": list(METADATA_CIDRS[0])}},
        {"ipBlock": {"cidr": "::/0", "except": list(METADATA_CIDRS[1])}},
    ]
    if in_cluster:
        peers.append({"namespaceSelector": {}})
    return peers


def _llm_egress(owner: Owner, spec: VoiceChatSpec) -> list[Obj]:
    llm = spec.llm
    if llm.engine == "external" and llm.url:
        to = _anywhere(in_cluster_host(llm.url))
        return [{"to": to, "ports": [{"protocol": "TCP", "port": url_port(llm.url)}]}]
    if llm.engine == "bedrock":
        # Bedrock Runtime and STS (IRSA's AssumeRoleWithWebIdentity) on HTTPS, or the endpoint override's port.
        ports = sorted({443, url_port(bedrock_endpoint(spec))})
        return [
            {"to": _anywhere(), "ports": [{"protocol": "TCP", "port": port} for port in ports]},
            {"to": list(POD_IDENTITY_AGENT), "ports": [{"protocol": "TCP", "port": 80}]},
        ]
    return [
        {
            "to": [{"podSelector": {"matchLabels": selector_labels(owner, LLM)}}],
            "ports": [{"protocol": "TCP", "port": ENGINE_PORT}, {"protocol": "TCP", "port": GATE_PORT}],
        }
    ]


def render_session_network_policy(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """Session pods: clients in on the session port, Prometheus in; out only to their LLM and to DNS.

    A compromised session pod cannot reach other workloads, the cloud metadata endpoint or the internet
    (except HTTPS when spec.session.stt.model names a hub model the pod downloads at start, the hosted LLM's
    port for external and bedrock engines, and the ports of remote speech servers).
    """
    egress: list[Obj] = [
        *_llm_egress(owner, spec),
        {
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": dict(DNS_POD_LABELS)}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    speech_urls = [s.url for s in (spec.session.stt, spec.session.tts) if s.engine == "remote" and s.url]
    if speech_urls:
        # A speech server, like a hosted LLM, has no address known here: its ports, anywhere but metadata.
        egress.append(
            {
                "to": _anywhere(any(in_cluster_host(url) for url in speech_urls)),
                "ports": [
                    {"protocol": "TCP", "port": port} for port in sorted({url_port(u) for u in speech_urls})
                ],
            }
        )
    if _stt_model_downloads(spec):
        egress.append(
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}
        )
    return _object(
        kinds.NETWORK_POLICY,
        _meta(owner, session_name(owner), SESSION),
        spec={
            "podSelector": {"matchLabels": selector_labels(owner, SESSION)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                # Browsers arrive through the Service (load balancer, ingress controller): any source.
                {"ports": [{"protocol": "TCP", "port": SESSION_PORT}]},
                # Prometheus scrapes the metrics port, which only its namespace reaches.
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": spec.monitoring.namespace}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SESSION_METRICS_PORT}],
                },
            ],
            "egress": egress,
        },
    )


def render_pod_monitor(owner: Owner, spec: VoiceChatSpec) -> Obj:
    """Scrapes the session pods (:metrics/metrics) and the LLM gate (:gate/metrics)."""
    interval = spec.monitoring.interval
    return _object(
        kinds.POD_MONITOR,
        _meta(owner, owner.name, "monitoring"),
        spec={
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": owner.name},
                "matchExpressions": [
                    {"key": "app.kubernetes.io/component", "operator": "In", "values": [LLM, SESSION]}
                ],
            },
            "podMetricsEndpoints": [
                {"port": "metrics", "path": "/metrics", "interval": interval},
                {"port": "gate", "path": "/metrics", "interval": interval},
            ],
        },
    )


def render_children(owner: Owner, spec: VoiceChatSpec) -> list[Obj]:
    """Every child of the VoiceChat, in apply order (configuration before the pods that read it)."""
    children = [render_config_map(owner, spec)]
    if not is_hosted(spec):
        children += [
            render_llm_service(owner, spec),
            render_network_policy(owner, spec),
            render_llm_deployment(owner, spec),
        ]
    if wants_service_account(spec):
        children.append(render_service_account(owner, spec))  # before the pods that name it
    children += [
        render_session_service(owner, spec),
        render_metrics_service(owner, spec),
        render_session_network_policy(owner, spec),
        render_session_deployment(owner, spec),
        render_hpa(owner, spec),
        render_pdb(owner, spec),
    ]
    if spec.monitoring.pod_monitor:
        children.append(render_pod_monitor(owner, spec))
    return children


def absent_children(owner: Owner, spec: VoiceChatSpec) -> list[tuple[kinds.Kind, str]]:
    """Optional children this spec does not want: they are deleted if they exist (and this VoiceChat owns them).

    A generated LLM API key Secret is not among them: it stays (garbage-collected with the VoiceChat), so
    switching back to an in-cluster engine reuses the same key.
    """
    absent = [] if spec.monitoring.pod_monitor else [(kinds.POD_MONITOR, owner.name)]
    if is_hosted(spec):
        name = llm_name(owner)
        absent += [(kinds.DEPLOYMENT, name), (kinds.SERVICE, name), (kinds.NETWORK_POLICY, name)]
    if not wants_service_account(spec):
        absent.append((kinds.SERVICE_ACCOUNT, session_name(owner)))
    return absent
