"""The FastAPI application: routes are thin; the pod (:mod:`serving`), the session registry and the
connections do the work."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voicechat_session import metrics
from voicechat_session.connection import Connection
from voicechat_session.protocol import PROTOCOL_VERSION, CloseCode, ErrorMessage
from voicechat_session.registry import SessionRegistry
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("voicechat_session") / "static"))


def create_app(settings: SessionSettings) -> FastAPI:
    pod = Pod(settings)
    registry = SessionRegistry(pod)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await pod.start()
        except Exception:
            log.exception("the session service could not start")
            await pod.close()
            raise
        try:
            yield
        finally:
            await pod.close()

    app = FastAPI(title="VoiceChat session service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pod = pod
    app.state.registry = registry

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        refusal = registry.admission()
        if refusal is not None:
            return JSONResponse({"ready": False, "reason": refusal[1]}, status_code=503)
        return JSONResponse({"ready": True, "sessions": len(registry)})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "sharing": settings.sharing,
            "voices": pod.voices,
            "voice": settings.tts_voice,
            "speed": settings.tts_speed,
            "workers": pod.workers,
            "sessions": len(registry),
            "max_sessions": settings.max_sessions,
            "models_warmup_seconds": pod.warmup_seconds,
            "llm": {
                "url": settings.llm_url,
                "model": pod.llm_info.model or pod.llm.model,
                "warm_ttft_ms": pod.llm_info.warm_ttft_ms,
                "warmup_report": pod.llm_info.report,
            },
        }

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(pod, registry, websocket)

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:

        @app.get("/", response_class=PlainTextResponse)
        async def no_client() -> str:
            return "The browser client is not installed (voicechat_session/static/ is missing); use WS /ws.\n"

    return app


async def serve_websocket(pod: Pod, registry: SessionRegistry, websocket: WebSocket) -> None:
    """Admit or refuse a connection, then run it. Refusals are explained: an error event, then a close code."""
    refusal = registry.admission()
    await websocket.accept()
    accepted = time.perf_counter()
    if refusal is not None:
        code, reason = refusal
        metrics.SESSIONS_REFUSED_TOTAL.labels(reason=code).inc()
        metrics.ERRORS_TOTAL.labels(code=code).inc()
        await websocket.send_text(ErrorMessage(code=code, message=reason, fatal=True).model_dump_json())
        close_code = CloseCode.GOING_AWAY if code == "shutting_down" else CloseCode.TRY_AGAIN_LATER
        await websocket.close(close_code, reason[:120])
        return
    connection = Connection(pod, websocket)
    registry.register(connection)  # before any await: admission and registration are one step
    try:
        await connection.run(accepted)
    finally:
        registry.unregister(connection)
