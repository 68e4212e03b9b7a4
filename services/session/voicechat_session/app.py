"""The FastAPI application: routes are thin; the pod (:mod:`serving`), the session registry and the
connections do the work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from voicechat_session import metrics
from voicechat_session.auth import (
    ANONYMOUS,
    SUBPROTOCOL,
    AuthError,
    Identity,
    TokenVerifier,
    token_from_subprotocols,
)
from voicechat_session.connection import Connection
from voicechat_session.limits import ClientLimits
from voicechat_session.protocol import PROTOCOL_VERSION, AuthMessage, CloseCode, ErrorCode, ErrorMessage
from voicechat_session.registry import SessionRegistry
from voicechat_session.security import (
    SecurityHeadersMiddleware,
    TransportMiddleware,
    client_ip,
    origin_allowed,
)
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("voicechat_session") / "static"))


def create_app(settings: SessionSettings, verifier: TokenVerifier | None = None) -> FastAPI:
    pod = Pod(settings)
    registry = SessionRegistry(pod)
    gate = Gate(settings, verifier or TokenVerifier(settings), ClientLimits(settings))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await pod.start()
        except Exception:
            log.exception("the session service could not start")
            await pod.close()
            raise
        internal = await _start_internal_server(settings) if settings.internal_port is not None else None
        try:
            yield
        finally:
            if internal is not None:
                internal[0].should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(internal[1], 10.0)
            await pod.close()

    app = FastAPI(
        title="VoiceChat session service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # no schema of the service for the public
    )
    app.add_middleware(TransportMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.pod = pod
    app.state.registry = registry
    app.state.gate = gate

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        refusal = registry.admission()
        if refusal is not None:
            return JSONResponse({"ready": False, "reason": refusal[1]}, status_code=503)
        return JSONResponse({"ready": True, "sessions": len(registry)})

    if settings.internal_port is None:
        # The local stack and the design's `GET /metrics` on the main port; a pod sets internal_port instead.
        app.add_api_route("/metrics", prometheus_metrics, methods=["GET"])

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        # Public: what the page needs; no internal URLs, paths or PIDs (the LLM's warm-up report has them).
        return {
            "protocol_version": PROTOCOL_VERSION,
            "voices": pod.voices,
            "voice": settings.tts_voice,
            "speed": settings.tts_speed,
            "auth": {"required": gate.verifier.enabled, "token_url": settings.auth_token_url},
            "llm": {"model": pod.llm_info.model or pod.llm.model, "warm_ttft_ms": pod.llm_info.warm_ttft_ms},
        }

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await serve_websocket(pod, registry, websocket, gate)

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:

        @app.get("/", response_class=PlainTextResponse)
        async def no_client() -> str:
            return "The browser client is not installed (voicechat_session/static/ is missing); use WS /ws.\n"

    return app


async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def internal_app() -> FastAPI:
    """What only the cluster should see (Prometheus), on ``internal_port``."""
    app = FastAPI(title="VoiceChat session internals", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"])
    return app


async def _start_internal_server(settings: SessionSettings) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        internal_app(), host=settings.host, port=settings.internal_port or 0, log_config=None, lifespan="off"
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(), name="internal-server")
    async with asyncio.timeout(10.0):
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"the internal port {settings.internal_port} could not be served")
            await asyncio.sleep(0.01)
    log.info("internal endpoints listening", extra={"port": settings.internal_port})
    return server, task


class _QuietServer(uvicorn.Server):
    """The second server leaves signal handling to the main one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gate:
    """Who may open a session: the Origin allowlist, the access token and the per-client limits."""

    def __init__(self, settings: SessionSettings, verifier: TokenVerifier, limits: ClientLimits) -> None:
        self.settings = settings
        self.verifier = verifier
        self.limits = limits

    async def identify(self, websocket: WebSocket) -> Identity:
        """The token's identity: from the subprotocol, else from a first ``auth`` message (bounded wait)."""
        if not self.verifier.enabled:
            return ANONYMOUS
        token = token_from_subprotocols(list(websocket.scope.get("subprotocols") or []))
        if token is None:
            try:
                async with asyncio.timeout(self.settings.auth_timeout_s):
                    raw = await websocket.receive_text()
                token = AuthMessage.model_validate_json(raw).token
            except TimeoutError as exc:
                raise AuthError(f"no access token within {self.settings.auth_timeout_s:g} s") from exc
            except (ValidationError, KeyError, RuntimeError) as exc:
                raise AuthError(
                    'the first message must be {"type": "auth", "token": "<access token>"}'
                ) from exc
        return self.verifier.verify(token)


async def _refuse(websocket: WebSocket, code: ErrorCode, reason: str, close_code: int) -> None:
    metrics.SESSIONS_REFUSED_TOTAL.labels(reason=code).inc()
    metrics.ERRORS_TOTAL.labels(code=code).inc()
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await websocket.send_text(ErrorMessage(code=code, message=reason, fatal=True).model_dump_json())
        await websocket.close(close_code, reason[:120])


async def serve_websocket(pod: Pod, registry: SessionRegistry, websocket: WebSocket, gate: Gate) -> None:
    """Admit or refuse a connection, then run it. Refusals are explained: an error event, then a close code."""
    settings = gate.settings
    offered = list(websocket.scope.get("subprotocols") or [])
    # A browser that offered subprotocols fails the connection unless one is selected.
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    accepted = time.perf_counter()
    if not origin_allowed(websocket.headers, websocket.url.scheme, settings.allowed_origins):
        metrics.AUTH_FAILURES_TOTAL.labels(reason="origin").inc()
        log.info("origin refused", extra={"origin": websocket.headers.get("origin", "")[:200]})
        await _refuse(
            websocket, "forbidden_origin", "this page's origin may not open sessions", CloseCode.UNAUTHORIZED
        )
        return
    refusal = registry.admission()
    if refusal is None:
        try:
            identity = await gate.identify(websocket)
        except WebSocketDisconnect:
            return
        except AuthError as exc:
            metrics.AUTH_FAILURES_TOTAL.labels(reason="token").inc()
            log.info("access token refused", extra={"error": str(exc)})
            await _refuse(websocket, "unauthorized", str(exc), CloseCode.UNAUTHORIZED)
            return
        refusal = registry.admission()  # again: the token may have taken a while
    if refusal is not None:
        code, reason = refusal
        close_code = CloseCode.GOING_AWAY if code == "shutting_down" else CloseCode.TRY_AGAIN_LATER
        await _refuse(websocket, code, reason, close_code)
        return
    ip = client_ip(websocket.scope, settings.trusted_proxy_header)
    limited = gate.limits.admit(identity, ip)
    if limited is not None:
        await _refuse(websocket, limited[0], limited[1], CloseCode.TRY_AGAIN_LATER)
        return
    try:
        connection = Connection(pod, websocket, identity)
        registry.register(connection)  # before any await: admission and registration are one step
        try:
            await connection.run(accepted)
        finally:
            registry.unregister(connection)
    finally:
        gate.limits.release(identity, ip)
