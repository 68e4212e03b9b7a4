"""Configuration of the operator process: environment variables ``VOICECHAT_OPERATOR_*``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voicechat_operator import OPERATOR_NAME

ENV_PREFIX = "VOICECHAT_OPERATOR_"
HEALTH_PORT = 8080


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated (globs allowed); empty: every namespace.",
    )
    standalone: bool = Field(False, description="Run without peering (a single replica, or tests).")
    peering_name: str = Field(
        OPERATOR_NAME, description="kopf peering object shared by the operator's replicas."
    )
    priority: int = Field(0, description="kopf peering priority of this replica.")
    health_host: str = Field("0.0.0.0", description="Bind address of the liveness endpoint.")
    health_port: int = Field(
        HEALTH_PORT, ge=1, le=65535, description="Port of the liveness endpoint (/healthz)."
    )
    field_manager: str = Field(OPERATOR_NAME, description="Server-side apply field manager of every write.")
    retry_initial_delay_s: float = Field(
        2.0, gt=0, description="First retry of a failed apply after this long; doubled after each failure."
    )
    retry_max_delay_s: float = Field(
        60.0, gt=0, description="Longest wait between two retries of a failed apply."
    )
    api_timeout_s: float = Field(30.0, gt=0, description="Timeout of one API request made by the operator.")
    llm_check_interval_s: float = Field(
        60.0, gt=0, description="Re-check an external LLM endpoint (GET {url}/models) this often."
    )
    llm_check_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of one external LLM check; past it, LLMReady is False (Unreachable)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def liveness_endpoint(self) -> str:
        return f"http://{self.health_host}:{self.health_port}/healthz"
