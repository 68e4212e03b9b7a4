"""Prometheus metrics of the gate (``GET /metrics`` on the gate port).

The engine's own metrics stay on the engine port (llama.cpp ``/metrics``, vLLM ``/metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

WARMUP_SECONDS = "voicechat_llm_warmup_seconds"
READY = "voicechat_llm_ready"
WARM_TTFT_SECONDS = "voicechat_llm_warm_ttft_seconds"
WARM_TOKENS_PER_SECOND = "voicechat_llm_warm_tokens_per_second"
LOAD_SECONDS = "voicechat_llm_load_seconds"
ENGINE_UP = "voicechat_llm_engine_up"
HEALTH_CHECK_FAILURES = "voicechat_llm_health_check_failures"  # exposed with the _total suffix

# Engine gauges that count requests being served or queued: what a drain waits on.
IN_FLIGHT_GAUGES = (
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)


class GateMetrics:
    """The gate's metrics in their own registry (one service per process, no global state in tests)."""

    def __init__(self, engine: str, model: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"engine": engine, "model": model}
        self.warmup_seconds = Gauge(
            WARMUP_SECONDS, "Engine start to ready (s).", labels.keys(), registry=self.registry
        ).labels(**labels)
        self.load_seconds = Gauge(
            LOAD_SECONDS, "Engine start to engine healthy (s).", labels.keys(), registry=self.registry
        ).labels(**labels)
        self.ready = Gauge(READY, "1 when warm and answering.", registry=self.registry)
        self.warm_ttft_seconds = Gauge(
            WARM_TTFT_SECONDS, "Time to first token when warm (s).", labels.keys(), registry=self.registry
        ).labels(**labels)
        self.warm_tokens_per_second = Gauge(
            WARM_TOKENS_PER_SECOND, "Decode rate when warm.", labels.keys(), registry=self.registry
        ).labels(**labels)
        self.engine_up = Gauge(
            ENGINE_UP, "1 while the engine answers its health check.", registry=self.registry
        )
        self.health_check_failures = Counter(
            HEALTH_CHECK_FAILURES, "Failed periodic engine health checks.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_in_flight(engine_metrics_text: str) -> int | None:
    """Requests running or queued in an engine, from its Prometheus text; None if it exports no such gauge."""
    total: float | None = None
    for family in text_string_to_metric_families(engine_metrics_text):
        if family.name in IN_FLIGHT_GAUGES:
            total = (total or 0.0) + sum(sample.value for sample in family.samples)
    return None if total is None else round(total)
