"""The session service in the test's own process: the real ASGI app and connection code on fake backends
(scripted STT, tone TTS, energy VAD) and a scripted LLM, served by uvicorn on an ephemeral port.

No model weights, no subprocess: a turn takes milliseconds plus the audio's real-time pacing, and a test can
look inside (``service.registry``, ``service.llm``). ::

    async with session_app(FakeLLM(reply="Hi."), idle_timeout_s=1) as service:
        async with VoiceChatClient.connect(service.ws_url) as client:
            ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from tests.support.fake_llm import MODEL, FakeLLM
from tests.support.inprocess import serve_in_process
from voicechat_session.app import create_app
from voicechat_session.main import uvicorn_config
from voicechat_session.registry import SessionRegistry
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings

SCRIPT = ["what is the capital of france", "stop please", "tell me more", "<error>"]
"""The fake STT's transcripts: ``utterance_tone(i, …)`` is heard as ``SCRIPT[i]``."""

FAKE_BACKENDS: dict[str, Any] = {
    "stt_backend": "fake",
    "tts_backend": "fake",
    "vad_backend": "energy",
    "fake_stt_transcripts": SCRIPT,
    "workers": 2,
    "partial_transcripts": False,
    "llm_model": MODEL,
}


@dataclass
class InProcessService:
    app: FastAPI
    base_url: str
    llm: FakeLLM
    settings: SessionSettings

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    @property
    def pod(self) -> Pod:
        pod: Pod = self.app.state.pod
        return pod

    @property
    def registry(self) -> SessionRegistry:
        registry: SessionRegistry = self.app.state.registry
        return registry

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10.0) as http:
            return await http.get(f"{self.base_url}{path}")


def metric(name: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def session_app(
    llm: FakeLLM | None = None,
    *,
    llm_url: str | None = None,
    startup_timeout_s: float = 30.0,
    **overrides: Any,
) -> AsyncIterator[InProcessService]:
    """The session service on fake backends; ``llm_url`` points it elsewhere than the fake LLM.
    ``startup_timeout_s`` bounds the start (model warm-up), for overrides that warm real models."""
    llm = llm or FakeLLM()
    async with contextlib.AsyncExitStack() as stack:
        if llm_url is None:
            llm_url = await stack.enter_async_context(llm.serving())
        settings = SessionSettings(**{**FAKE_BACKENDS, "llm_url": llm_url, **overrides})
        app = create_app(settings)
        base_url = await stack.enter_async_context(
            serve_in_process(config=uvicorn_config(app, settings), startup_timeout_s=startup_timeout_s)
        )
        yield InProcessService(app=app, base_url=base_url, llm=llm, settings=settings)
