"""The VoiceChat spec as a typed model, parsed from the custom resource.

Defaults equal the CRD's (a test applies the CRD's defaults the way the API server does and checks that the
parsed model is the same either way), so the operator renders the same children whether or not the API
server defaulted the object. Checks the schema cannot express live in :func:`parse_spec`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

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


Engine = Literal["vllm", "llamacpp", "external", "bedrock"]
# Engines served by someone else: no LLM Deployment, Service, NetworkPolicy or generated API key.
HOSTED_ENGINES: tuple[str, ...] = ("external", "bedrock")
URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
# us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4 ...
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"


class BedrockSpec(_Model):
    """Amazon Bedrock: the session pods call ConverseStream with their own (IRSA / Pod Identity) identity."""

    region: str | None = Field(None, pattern=REGION_PATTERN)
    endpoint_url: str | None = Field(None, pattern=URL_PATTERN)


class LLMSpec(_Model):
    engine: Engine = "vllm"
    # vllm/llamacpp: None is the LLM service's default for the engine (Llama-3.1-8B-Instruct for vLLM, the
    # embedded GGUF). external/bedrock: required, the provider's model name or the Bedrock model id.
    model: str | None = Field(None, min_length=1)
    # external: the OpenAI-compatible base URL (…/v1) of OpenAI, Ollama, LM Studio, a gateway, vLLM elsewhere.
    url: str | None = Field(None, pattern=URL_PATTERN)
    bedrock: BedrockSpec | None = None
    served_model_name: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)
    image_pull_policy: PullPolicy = "IfNotPresent"
    hugging_face_token_secret: SecretKey | None = None
    # None: the operator generates NAME-llm-api-key (see render.llm_api_key_secret) for in-cluster engines;
    # an external server without it is called without a key (Ollama, LM Studio).
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


class ServiceAccountSpec(_Model):
    """The session pods' ServiceAccount NAME-session (IRSA: eks.amazonaws.com/role-arn; Pod Identity: none)."""

    annotations: dict[str, str] = Field(default_factory=dict)


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
    # None: no ServiceAccount of their own (unless llm.engine is bedrock, which needs an identity).
    service_account: ServiceAccountSpec | None = None


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


def is_hosted(spec: VoiceChatSpec) -> bool:
    """Whether the LLM is served outside this VoiceChat (no LLM pods of its own)."""
    return spec.llm.engine in HOSTED_ENGINES


# EC2's IPv6 instance metadata and EKS Pod Identity agent addresses (the IPv4 ones are link-local).
CLOUD_IPV6_METADATA = (ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("fd00:ec2::23"))


def _metadata_address(url: str) -> bool:
    """Whether ``url`` names a link-local or cloud metadata address literally (the operator would probe it)."""
    host = urlsplit(url).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: resolved by the pods and the operator, as any other
    return address.is_link_local or address in CLOUD_IPV6_METADATA


def _engine_problems(llm: LLMSpec) -> list[str]:
    problems = []
    if llm.engine in HOSTED_ENGINES and llm.model is None:
        problems.append(
            f"llm.engine {llm.engine} needs llm.model (the provider's model name or Bedrock model id)"
        )
    if llm.engine == "external" and llm.url is None:
        problems.append(
            "llm.engine external needs llm.url (the OpenAI-compatible base URL, e.g. https://…/v1)"
        )
    if llm.url is not None and _metadata_address(llm.url):
        problems.append("llm.url may not be a link-local or cloud metadata address")
    if llm.engine != "external" and llm.url is not None:
        problems.append(f"llm.url applies only to llm.engine external, not {llm.engine}")
    if llm.engine == "bedrock" and (llm.bedrock is None or llm.bedrock.region is None):
        problems.append("llm.engine bedrock needs llm.bedrock.region (e.g. us-east-1)")
    if llm.engine != "bedrock" and llm.bedrock is not None:
        problems.append(f"llm.bedrock applies only to llm.engine bedrock, not {llm.engine}")
    if llm.engine == "bedrock" and llm.api_key_secret is not None:
        problems.append(
            "llm.apiKeySecret does not apply to bedrock: the session pods' identity signs the calls"
        )
    return problems


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
    problems += _engine_problems(llm)
    if llm.engine in HOSTED_ENGINES:
        return problems  # the rest concerns LLM pods, which hosted engines do not have
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
