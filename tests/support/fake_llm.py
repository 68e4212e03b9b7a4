"""A scripted OpenAI-compatible chat server (``/v1/chat/completions`` streaming SSE, ``/v1/models``).

It streams a reply word by word at a set pace and records every request and every stream the client closed
early, so tests can check that an interrupted turn really closes its LLM stream. Failure modes stand in for
an LLM outage: ``http_503``, ``http_500``, an ``error`` event mid-stream, a ``stall`` before the first token,
and a dropped connection. Served in-process with :func:`tests.support.inprocess.serve_in_process`. ::

    llm = FakeLLM(reply="Paris is the capital of France.")
    async with llm.serving() as api_url:                  # http://127.0.0.1:PORT/v1
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.inprocess import serve_in_process

MODEL = "fake-model"
Mode = Literal["ok", "http_503", "http_500", "error_event", "stall", "drop"]


@dataclass
class FakeLLM:
    reply: str = "Hello there. It is nice to talk to you."
    """Streamed for every request unless ``replies`` has a key contained in the newest user words (the last
    line of the last user message: the service merges consecutive user turns with a newline)."""
    replies: dict[str, str] = field(default_factory=dict)
    token_delay_s: float = 0.005
    first_token_delay_s: float = 0.0
    mode: Mode = "ok"
    error_after_tokens: int = 2
    """``error_event``/``drop``: tokens sent before the failure."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    cancelled: int = 0
    """Streams that ended before the last token (the client closed them, or ``drop``)."""
    active: int = 0
    max_active: int = 0
    """Most streams open at once."""
    stream_cut: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a stream ends before its last token."""
    api_key: str | None = None
    """When set, every request needs ``Authorization: Bearer <api_key>`` (else 401, as OpenAI answers)."""
    model: str = MODEL
    """The one model ``/v1/models`` lists."""

    def reply_for(self, messages: list[dict[str, str]]) -> str:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        last_user = last_user.splitlines()[-1] if last_user else ""
        for key, reply in self.replies.items():
            if key in last_user:
                return reply
        return self.reply

    def app(self) -> Starlette:
        def refused(request: Request) -> Response | None:
            if self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}":
                return None
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=401)

        async def models(request: Request) -> Response:
            if (refusal := refused(request)) is not None:
                return refusal
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}]})

        async def chat(request: Request) -> Response:
            if (refusal := refused(request)) is not None:
                return refusal
            body = await request.json()
            self.requests.append(body)
            if self.mode == "http_503":
                return JSONResponse({"error": {"message": "loading"}}, status_code=503)
            if self.mode == "http_500":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            words = self.reply_for(body["messages"]).split(" ")
            return StreamingResponse(self._stream(words), media_type="text/event-stream")

        return Starlette(
            routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
        )

    async def _stream(self, words: list[str]) -> AsyncIterator[bytes]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            if self.mode == "stall":
                await asyncio.sleep(3600)
            await asyncio.sleep(self.first_token_delay_s)
            for index, word in enumerate(words):
                if index == self.error_after_tokens and self.mode == "error_event":
                    yield _event({"error": {"message": "the model crashed", "type": "server_error"}})
                    finished = True
                    return
                if index == self.error_after_tokens and self.mode == "drop":
                    raise ConnectionResetError("fake LLM: dropped the connection")
                token = word if index == len(words) - 1 else word + " "
                yield _event(
                    {"id": "c1", "model": MODEL, "choices": [{"index": 0, "delta": {"content": token}}]}
                )
                await asyncio.sleep(self.token_delay_s)
            yield _event(
                {"id": "c1", "model": MODEL, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            )
            yield b"data: [DONE]\n\n"
            finished = True
            self.completed += 1
        finally:
            self.active -= 1
            if not finished:
                self.cancelled += 1
                self.stream_cut.set()

    @contextlib.asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[str]:
        """Serve until the block exits; yields the API base URL (``…/v1``)."""
        async with serve_in_process(self.app(), port=port) as base_url:
            yield f"{base_url}/v1"


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
