"""The gate on port 8001: ``/livez``, ``/readyz``, ``/warmup``, ``/metrics``.

Handlers only read :class:`GateState`; the service owns every transition. Readiness is a pure function of
that state, so each 503 carries the reason.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


@dataclass
class GateState:
    report: WarmupReport
    metrics: GateMetrics
    max_warm_ttft_s: float | None = None
    phase: Phase = Phase.STARTING
    draining: bool = False
    engine_error: str | None = None  # last failed health probe, or the engine's death
    engine_dead: bool = False
    failure: str | None = None

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready only when warm, answering, within the TTFT bound and not draining."""
        if self.draining:
            return False, "draining: the service is shutting down"
        if self.engine_dead:
            return False, self.engine_error or "engine is dead"
        if self.phase is Phase.FAILED:
            return False, f"start failed: {self.failure}"
        if self.phase is Phase.STARTING:
            return False, "engine starting (loading the model)"
        if self.phase is Phase.WARMING:
            return False, "warming up (running generations with the system prompt)"
        ttft = self.report.warm_ttft_seconds
        if self.max_warm_ttft_s is not None and ttft is not None and ttft > self.max_warm_ttft_s:
            return False, f"warm TTFT {ttft:.3f}s exceeds max_warm_ttft_s={self.max_warm_ttft_s:g}s"
        if self.engine_error is not None:
            return False, f"engine not answering: {self.engine_error}"
        return True, ""

    def refresh(self) -> None:
        """Recompute readiness into the report and the metrics after any transition."""
        ready, reason = self.readiness()
        self.report.ready = ready
        self.report.reason = reason
        self.metrics.ready.set(1 if ready else 0)

    def record_warmup(
        self, samples: list[WarmupSample], warm_ttft: float, warm_rate: float | None, warmup_seconds: float
    ) -> None:
        self.report.samples = samples
        self.report.requests = len(samples)
        self.report.warm_ttft_seconds = warm_ttft
        self.report.warm_tokens_per_second = warm_rate
        self.report.warmup_seconds = warmup_seconds
        self.metrics.warm_ttft_seconds.set(warm_ttft)
        if warm_rate is not None:
            self.metrics.warm_tokens_per_second.set(warm_rate)
        self.metrics.warmup_seconds.set(warmup_seconds)


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
        state.refresh()
        # 200 once the figures exist (even if a threshold keeps the pod unready); 503 before.
        measured = state.report.warm_ttft_seconds is not None
        return JSONResponse(state.report.model_dump(mode="json"), status_code=200 if measured else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.refresh()
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
