"""The VoiceChat spec as a typed model, parsed from the custom resource.

Defaults equal the CRD's (a test applies the CRD's defaults the way the API server does and checks that the
parsed model is the same either way), so the operator renders the same children whether or not the API
server defaulted the object. Checks the schema cannot express live in :func:`parse_spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from voicechat_llm.settings import DEFAULT_SYSTEM_PROMPT

# Kubernetes object names: NAME-session must stay a valid Service name (DNS-1035 label, 63 characters).
LONGEST_SUFFIX = "-session"
MAX_NAME_LENGTH = 63 - len(LONGEST_SUFFIX)
GPU_TOLERATION: dict[str, Any] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
# Engine flags a VoiceChat author may not pass: running code shipped with a model, replacing the engine API key
# or where it listens (the gate's probes and the Service expect the rendered ones), reading local files.
FORBIDDEN_EXTRA_ARGS = (
    "--trust-remote-code",
    "--api-key",
    "--host",
    "--port",
    "--allowed-local-media-path",
    "--ssl-keyfile",
)


def forbidden_extra_args(args: list[str]) -> list[str]:
    """The arguments of ``args`` that name a forbidden flag (``--flag`` or ``--flag=value``)."""
    return [arg for arg in args if arg.split("=", 1)[0] in FORBIDDEN_EXTRA_ARGS]


class InvalidSpecError(ValueError):
    """The spec cannot be reconciled; ``problems`` lists every reason, in the user's field names."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Model(BaseModel):
    # camelCase in the CR, snake_case in Python; unknown fields are an error (the API server prunes them,
    # so they only arrive when the CRD is missing its schema).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Resources(_Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities_as_strings(cls, value: Any) -> Any:
        # int-or-string in the CRD: `cpu: 2` and `cpu: "2"` are the same quantity.
        if isinstance(value, Mapping):
            return {
                str(k): str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in value.items()
            }
        return value


class GPU(_Model):
    count: int = Field(1, ge=0, le=16)
    resource_name: str = Field("nvidia.com/gpu", min_length=1)


class SecretKey(_Model):
    name: str = Field(min_length=1)
    key: str = Field("token", min_length=1)


class ApiKeySecret(SecretKey):
    key: str = Field("api-key", min_length=1)


class LLMSpec(_Model):
    engine: Literal["vllm", "llamacpp"] = "vllm"
    # None: the LLM service's default for the engine (Llama-3.1-8B-Instruct for vLLM, the embedded GGUF).
    model: str | None = Field(None, min_length=1)
    served_model_name: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)
    image_pull_policy: PullPolicy = "IfNotPresent"
    hugging_face_token_secret: SecretKey | None = None
    # None: the operator generates NAME-llm-api-key (see render.llm_api_key_secret).
    api_key_secret: ApiKeySecret | None = None
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=65536)
    max_model_len: int = Field(4096, ge=256, le=1048576)
    replicas: int = Field(1, ge=0, le=64)
    gpu: GPU = Field(default_factory=GPU)
    # g5.xlarge: 4 vCPU / 16 GiB, about 3.9 CPU and 14.5Gi allocatable after kubelet and daemon sets.
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "3500m", "memory": "12Gi"}, limits={"memory": "14Gi"}
        )
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: [dict(GPU_TOLERATION)])
    extra_args: list[str] = Field(default_factory=list)
    warmup_timeout_seconds: int = Field(900, ge=10, le=7200)
    max_warm_ttft_seconds: float | None = Field(None, ge=0.01, le=60, alias="maxWarmTTFTSeconds")
    startup_budget_seconds: int = Field(900, ge=30, le=7200)
    drain_seconds: int = Field(20, ge=0, le=600)


class Autoscaling(_Model):
    target_cpu_utilization_percent: int = Field(70, ge=0, le=100, alias="targetCPUUtilizationPercent")
    target_active_sessions_per_pod: int = Field(0, ge=0, le=1000)
    scale_down_stabilization_seconds: int = Field(300, ge=0, le=3600)


SPEECH_URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"


class STT(_Model):
    # `remote`: an OpenAI-compatible /v1/audio/transcriptions server (url, model, apiKeySecret).
    engine: Literal["faster-whisper", "remote"] = "faster-whisper"
    model: str | None = Field(None, min_length=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = Field("int8", min_length=1)
    language: str = "en"
    url: str | None = Field(None, pattern=SPEECH_URL_PATTERN)
    api_key_secret: ApiKeySecret | None = None


class TTS(_Model):
    # `remote`: an OpenAI-compatible /v1/audio/speech server such as Kokoro-FastAPI, Orpheus or Coqui XTTS.
    engine: Literal["kokoro-onnx", "kokoro", "remote"] = "kokoro-onnx"
    voice: str = Field("jf_alpha", min_length=1)
    speed: float = Field(1.0, ge=0.5, le=2.0)
    device: Literal["cpu", "cuda"] = "cpu"
    model: str | None = Field(None, min_length=1)
    url: str | None = Field(None, pattern=SPEECH_URL_PATTERN)
    api_key_secret: ApiKeySecret | None = None


class ResumeKeySecret(_Model):
    """The Secret whose ``key`` (and, during a rotation, ``previousKey``) seal the session's resume tokens."""

    name: str = Field(min_length=1)
    key: str = Field("key", min_length=1)
    previous_key: str = Field("previous-key", min_length=1)


class AuthKeySecret(SecretKey):
    key: str = Field("key", min_length=1)


class SessionAuth(_Model):
    """Access tokens: the HS256 key that session pods verify (and the app's backend mints with)."""

    key_secret: AuthKeySecret | None = None
    # For demos behind another gate only: sessions then open without a token.
    allow_unauthenticated: bool = False


class SessionSpec(_Model):
    image: str | None = Field(None, min_length=1)
    image_pull_policy: PullPolicy = "IfNotPresent"
    min_replicas: int = Field(ge=1, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    max_sessions_per_pod: int = Field(8, ge=1, le=1000)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    stt: STT = Field(default_factory=STT)
    tts: TTS = Field(default_factory=TTS)
    resources: Resources = Field(
        default_factory=lambda: Resources(requests={"cpu": "2", "memory": "3Gi"}, limits={"memory": "3Gi"})
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    drain_seconds: int = Field(20, ge=0, le=3600)
    resume_key_secret: ResumeKeySecret | None = None
    auth: SessionAuth = Field(default_factory=SessionAuth)


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(80, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class Monitoring(_Model):
    pod_monitor: bool = False
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$")
    namespace: str = "monitoring"


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class VoiceChatSpec(_Model):
    llm: LLMSpec
    session: SessionSpec
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)


def _cross_field_problems(name: str, spec: VoiceChatSpec) -> list[str]:
    problems = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name is {len(name)} characters; at most {MAX_NAME_LENGTH} fit in child names"
        )
    session, scaling, llm = spec.session, spec.session.autoscaling, spec.llm
    if session.max_replicas < session.min_replicas:
        problems.append(
            f"session.maxReplicas ({session.max_replicas}) is less than session.minReplicas ({session.min_replicas})"
        )
    if scaling.target_cpu_utilization_percent == 0 and scaling.target_active_sessions_per_pod == 0:
        problems.append(
            "session.autoscaling needs targetCPUUtilizationPercent or targetActiveSessionsPerPod above 0"
        )
    if scaling.target_active_sessions_per_pod > session.max_sessions_per_pod:
        problems.append(
            f"session.autoscaling.targetActiveSessionsPerPod ({scaling.target_active_sessions_per_pod}) exceeds "
            f"session.maxSessionsPerPod ({session.max_sessions_per_pod}): pods refuse sessions before the "
            "autoscaler reacts"
        )
    if llm.startup_budget_seconds < llm.warmup_timeout_seconds:
        problems.append(
            f"llm.startupBudgetSeconds ({llm.startup_budget_seconds}) is less than llm.warmupTimeoutSeconds "
            f"({llm.warmup_timeout_seconds}): the kubelet would restart the pod before the model may load"
        )
    if forbidden := forbidden_extra_args(llm.extra_args):
        problems.append(
            f"llm.extraArgs may not contain {', '.join(forbidden)} (forbidden: {', '.join(FORBIDDEN_EXTRA_ARGS)})"
        )
    for stage, speech in (("stt", session.stt), ("tts", session.tts)):
        if speech.engine == "remote" and speech.url is None:
            problems.append(
                f"session.{stage}.engine remote needs session.{stage}.url (the server's …/v1 base URL)"
            )
        if speech.engine != "remote" and (speech.url is not None or speech.api_key_secret is not None):
            problems.append(
                f"session.{stage}.url and apiKeySecret are only used with session.{stage}.engine remote"
            )
    if session.tts.engine != "remote" and session.tts.model is not None:
        problems.append(
            "session.tts.model names a remote server's model: only used with session.tts.engine remote"
        )
    if llm.engine == "vllm" and llm.gpu.count == 0:
        problems.append(
            "llm.engine vllm needs llm.gpu.count of at least 1 (use llamacpp for CPU-only LLM pods)"
        )
    return problems


def parse_spec(name: str, spec: Mapping[str, Any]) -> VoiceChatSpec:
    """The typed spec of VoiceChat ``name``; :class:`InvalidSpecError` lists everything wrong with it."""
    try:
        parsed = VoiceChatSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpecError(
            [f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        ) from exc
    problems = _cross_field_problems(name, parsed)
    if problems:
        raise InvalidSpecError(problems)
    return parsed
