"""The warm-up report served at the gate's ``GET /warmup``.

Dependency-light on purpose (pydantic only): the session service imports it to parse the report.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class WarmupSample(BaseModel):
    """One streaming warm-up generation with the system prompt."""

    ttft_seconds: float = Field(description="Request sent → first content token received.")
    total_seconds: float = Field(description="Request sent → stream finished.")
    completion_tokens: int = Field(description="Tokens generated (engine usage, else content chunks).")
    tokens_per_second: float | None = Field(
        None, description="Decode rate after the first token; None with fewer than two tokens."
    )


class WarmupReport(BaseModel):
    """What the gate knows about the engine's warm-up; figures are None until measured."""

    engine: str = Field(description="llamacpp or vllm.")
    model: str = Field(description="GGUF path (llamacpp) or model id/path (vllm).")
    served_model_name: str = Field(description="The model name clients send.")
    engine_url: str = Field(description="Base URL of the OpenAI-compatible engine (without /v1).")
    engine_pid: int | None = Field(None, description="PID of the engine process (vllm child or this one).")
    ready: bool = Field(False, description="True when /readyz answers 200.")
    reason: str = Field("", description="Why not ready (empty when ready).")
    load_seconds: float | None = Field(None, description="Engine start → engine answers its health check.")
    warmup_seconds: float | None = Field(None, description="Engine start → ready (warm-up done).")
    warm_ttft_seconds: float | None = Field(None, description="Median TTFT of the warm generations.")
    warm_tokens_per_second: float | None = Field(None, description="Median decode rate when warm.")
    requests: int = Field(0, description="Warm-up generations run.")
    samples: list[WarmupSample] = Field(default_factory=list, description="Each warm-up generation.")
    system_prompt_sha256: str = Field(description="sha256 of the system prompt the engine was warmed with.")
    max_warm_ttft_s: float | None = Field(None, description="Readiness threshold on warm TTFT, if set.")
