"""The gate on port 8001: ``/livez``, ``/readyz``, ``/warmup``, ``/metrics``.

Handlers only read :class:`GateState`; the service reports events to it (engine healthy, warmed, exited, …)
and the state alone decides what they mean. Readiness is a pure function of that state, so each 503 carries
the reason.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from voicechat_llm.metrics import GateMetrics
from voicechat_llm.report import WarmupReport, WarmupSample


class Phase(enum.StrEnum):
    STARTING = "starting"  # engine loading, not yet answering
    WARMING = "warming"  # engine answers; warm-up generations running
    SERVING = "serving"  # warm-up done
    FAILED = "failed"  # start or warm-up failed; the service is exiting


class HealthChange(enum.Enum):
    """What one periodic health probe changed, so the service logs transitions and not every probe."""

    UNCHANGED = "unchanged"
    FAILING = "failing"  # the engine stopped answering (was answering)
    RECOVERED = "recovered"  # the engine answers again


@dataclass
class GateState:
    """The gate's view of the engine; it changes only through the event methods below.

    Every event updates the report, the metrics and readiness together (``_refresh``), so ``/readyz``,
    ``/warmup`` and ``voicechat_llm_ready`` can never disagree.
    """

    report: WarmupReport
    metrics: GateMetrics
    max_warm_ttft_s: float | None = None
    _phase: Phase = field(default=Phase.STARTING, init=False)
    _draining: bool = field(default=False, init=False)
    # Last failed health probe, or the engine's death.
    _engine_error: str | None = field(default=None, init=False)
    _engine_dead: bool = field(default=False, init=False)
    _failure: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._refresh()

    # -- reads ---------------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def engine_dead(self) -> bool:
        return self._engine_dead

    @property
    def engine_error(self) -> str | None:
        return self._engine_error

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready only when warm, answering, within the TTFT bound and not draining."""
        if self._draining:
            return False, "draining: the service is shutting down"
        if self._engine_dead:
            return False, self._engine_error or "engine is dead"
        if self._phase is Phase.FAILED:
            return False, f"start failed: {self._failure}"
        if self._phase is Phase.STARTING:
            return False, "engine starting (loading the model)"
        if self._phase is Phase.WARMING:
            return False, "warming up (running generations with the system prompt)"
        ttft = self.report.warm_ttft_seconds
        if self.max_warm_ttft_s is not None and ttft is not None and ttft > self.max_warm_ttft_s:
            return False, f"warm TTFT {ttft:.3f}s exceeds max_warm_ttft_s={self.max_warm_ttft_s:g}s"
        if self._engine_error is not None:
            return False, f"engine not answering: {self._engine_error}"
        return True, ""

    # -- events --------------------------------------------------------------------------------------

    def engine_started(self, pid: int | None) -> None:
        """The engine process exists (a vLLM child, or this process for llama.cpp); not answering yet."""
        self.report.engine_pid = pid
        self._refresh()

    def engine_healthy(self, load_seconds: float) -> None:
        """The engine answered its first health check: warm-up begins."""
        self.report.load_seconds = load_seconds
        self.metrics.load_seconds.set(load_seconds)
        self.metrics.engine_up.set(1)
        self._phase = Phase.WARMING
        self._refresh()

    def warmed(
        self, samples: list[WarmupSample], warm_ttft: float, warm_rate: float | None, warmup_seconds: float
    ) -> None:
        """Warm-up generations done: serving (ready unless the warm TTFT exceeds its bound)."""
        self.report.samples = samples
        self.report.requests = len(samples)
        self.report.warm_ttft_seconds = warm_ttft
        self.report.warm_tokens_per_second = warm_rate
        self.report.warmup_seconds = warmup_seconds
        self.metrics.warm_ttft_seconds.set(warm_ttft)
        if warm_rate is not None:
            self.metrics.warm_tokens_per_second.set(warm_rate)
        self.metrics.warmup_seconds.set(warmup_seconds)
        self._phase = Phase.SERVING
        self._refresh()

    def start_failed(self, failure: str) -> None:
        """Start or warm-up failed; the service is about to exit."""
        self._phase = Phase.FAILED
        self._failure = failure
        self._refresh()

    def engine_exited(self, reason: str) -> None:
        """The engine process is gone: liveness and readiness fail from now on, whatever probes say."""
        self._engine_dead = True
        self._engine_error = reason
        self.metrics.engine_up.set(0)
        self._refresh()

    def health_checked(self, failure: str | None) -> HealthChange:
        """One periodic probe's result: None when the engine answered, else why not."""
        was_failing = self._engine_error is not None
        if failure is not None:
            self.metrics.health_check_failures.inc()
        if not self._engine_dead:
            # A dead engine keeps its exit as the reason; a probe cannot revive it.
            self._engine_error = failure
        self.metrics.engine_up.set(0 if failure else 1)
        self._refresh()
        if failure is not None and not was_failing:
            return HealthChange.FAILING
        if failure is None and was_failing and not self._engine_dead:
            return HealthChange.RECOVERED
        return HealthChange.UNCHANGED

    def drain(self) -> None:
        """SIGTERM/SIGINT: not ready from now on, so load balancers stop sending requests."""
        self._draining = True
        self._refresh()

    def _refresh(self) -> None:
        ready, reason = self.readiness()
        self.report.ready = ready
        self.report.reason = reason
        self.metrics.ready.set(1 if ready else 0)


LiveCheck = Callable[[], Awaitable[str | None]]


def create_gate_app(state: GateState, live_check: LiveCheck) -> FastAPI:
    """``live_check`` probes the engine now: None when alive and answering, else why not."""
    app = FastAPI(title="voicechat-llm gate", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/livez")
    async def livez() -> JSONResponse:
        reason = await live_check()
        if reason is None:
            return JSONResponse({"live": True})
        return JSONResponse({"live": False, "reason": reason}, status_code=503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, reason = state.readiness()
        if ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @app.get("/warmup")
    async def warmup() -> JSONResponse:
        # 200 once the figures exist (even if a threshold keeps the pod unready); 503 before.
        measured = state.report.warm_ttft_seconds is not None
        return JSONResponse(state.report.model_dump(mode="json"), status_code=200 if measured else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
