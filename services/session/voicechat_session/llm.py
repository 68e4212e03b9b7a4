"""The chat-model stage: :class:`ChatModel`, the interface a turn streams its reply through, and
:class:`LLMClient`, streaming chat completions from any OpenAI-compatible endpoint (the LLM service, vLLM,
llama.cpp, Ollama, LM Studio, OpenAI) over Server-Sent Events. Amazon Bedrock is
:class:`voicechat_session.bedrock.BedrockChatModel`; the pod picks one by ``llm_provider``.

Cancelling the consuming task closes the HTTP response, which drops the connection: the engine notices the
disconnect and aborts the generation, so an interrupted reply stops costing GPU time at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from voicechat_common.openai_stream import StreamFormatError, chunk_content, chunk_error, parse_sse_data
from voicechat_session import metrics
from voicechat_session.history import ChatMessage
from voicechat_session.protocol import ErrorCode
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

# Below llama.cpp's 5 s server-side keep-alive timeout (see serving.py).
LLM_KEEPALIVE_EXPIRY_S = 2.0


class LLMError(Exception):
    """The LLM answered with an error or an unreadable stream."""

    code: ErrorCode = "llm_error"


class LLMUnavailable(LLMError):
    """The LLM endpoint refused the connection or is not ready."""

    code: ErrorCode = "llm_unavailable"


class LLMTimeout(LLMError):
    """No first token, or no complete reply, within its deadline."""

    code: ErrorCode = "llm_timeout"


class LLMThrottled(LLMError):
    """The provider refused the request for its rate or quota (HTTP 429, Bedrock ThrottlingException)."""

    code: ErrorCode = "llm_throttled"


@dataclass
class StreamStats:
    request_started: float = 0.0
    first_token_at: float | None = None
    completed: bool = False

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.request_started


def parse_sse_line(line: str) -> str | None:
    """The content delta in one SSE ``data:`` line; None for anything else. Raises LLMError on errors."""
    try:
        chunk = parse_sse_data(line)
    except StreamFormatError as exc:
        raise LLMError(f"unreadable stream event: {exc}") from exc
    if chunk is None:
        return None
    if (error := chunk_error(chunk)) is not None:
        raise LLMError(f"the LLM reported an error: {error}")
    return chunk_content(chunk) or None


class ChatModel(Protocol):
    """The chat-model stage as a turn uses it: one per pod, every call an independent request."""

    @property
    def model(self) -> str | None:
        """The model requested (None until known)."""
        ...

    async def resolve_model(self) -> str | None:
        """The model, asking the provider when it was not configured (None while it is unreachable)."""
        ...

    async def stream(
        self, messages: Sequence[ChatMessage], stats: StreamStats, on_delta: Callable[[str], None]
    ) -> str:
        """Stream a reply, calling ``on_delta`` per text delta; returns the whole text.

        Records the request start and first token in ``stats``; raises LLMUnavailable, LLMThrottled,
        LLMTimeout or LLMError. Cancelling the caller closes the provider's stream.
        """
        ...

    async def aclose(self) -> None: ...


class LLMClient:
    """One per pod: an HTTP connection pool to the LLM; every call is an independent request."""

    def __init__(self, settings: SessionSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self.base_url = settings.llm_url.rstrip("/")
        self._model: str | None = settings.llm_model
        self._headers = {"Accept": "text/event-stream"}
        if settings.llm_api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"

    @property
    def model(self) -> str | None:
        return self._model

    async def aclose(self) -> None:
        """Nothing of its own to close: the pod owns the shared HTTP client."""

    async def resolve_model(self) -> str | None:
        """The configured model, else the first one the endpoint lists (None while it is unreachable)."""
        if self._model is None:
            try:
                response = await self.http.get(f"{self.base_url}/models", headers=self._headers, timeout=5.0)
                response.raise_for_status()
                data = response.json().get("data") or []
                if data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
                    self._model = data[0]["id"]
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                log.warning("could not list LLM models", extra={"url": self.base_url, "error": str(exc)})
        return self._model

    def _payload(self, messages: Sequence[ChatMessage], model: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "messages": [m.as_openai() for m in messages],
            "stream": True,
            "temperature": self.settings.llm_temperature,
            "max_tokens": self.settings.llm_max_tokens,
        }
        if model:
            payload["model"] = model
        return payload

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, messages: Sequence[ChatMessage], model: str | None
    ) -> AsyncIterator[httpx.Response]:
        """POST the chat request; retried once when a pooled connection breaks before any response.

        That failure means the server closed an idle keep-alive connection as we reused it: the request
        never reached the engine, so sending it again is safe. Any later failure is reported, not retried.
        """
        request = self.http.build_request(
            "POST",
            f"{self.base_url}/chat/completions",
            json=self._payload(messages, model),
            headers=self._headers,
            timeout=httpx.Timeout(10.0, read=self.settings.llm_stream_timeout_s),
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.RemoteProtocolError:
            log.info("LLM connection was closed while idle; retrying once", extra={"url": self.base_url})
            response = await self.http.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    async def stream(
        self, messages: Sequence[ChatMessage], stats: StreamStats, on_delta: Callable[[str], None]
    ) -> str:
        """Stream a reply, calling ``on_delta`` (synchronously) per content delta; returns the whole text.

        Raises LLMUnavailable, LLMTimeout or LLMError. A callback rather than an async generator: the
        deadlines (``asyncio.timeout``) must only ever fire while this coroutine is the one waiting.
        """
        parts: list[str] = []
        s = self.settings
        model = await self.resolve_model()
        stats.request_started = time.perf_counter()
        started = asyncio.get_running_loop().time()
        metrics.LLM_STREAMS_ACTIVE.inc()
        try:
            async with asyncio.timeout(s.llm_first_token_timeout_s) as timer:
                async with self._open_stream(messages, model) as response:
                    if response.status_code != 200:
                        body = (await response.aread()).decode(errors="replace")[:300]
                        error = (
                            LLMUnavailable
                            if response.status_code in (502, 503, 504)
                            else LLMThrottled
                            if response.status_code == 429
                            else LLMError
                        )
                        raise error(f"the LLM answered HTTP {response.status_code}: {body}")
                    async for line in response.aiter_lines():
                        delta = parse_sse_line(line)
                        if delta is None:
                            continue
                        if stats.first_token_at is None:
                            stats.first_token_at = time.perf_counter()
                            timer.reschedule(started + s.llm_stream_timeout_s)
                        parts.append(delta)
                        on_delta(delta)
            stats.completed = True
            return "".join(parts)
        except TimeoutError as exc:
            which = "first token" if stats.first_token_at is None else "complete reply"
            limit = s.llm_first_token_timeout_s if stats.first_token_at is None else s.llm_stream_timeout_s
            raise LLMTimeout(f"no {which} from the LLM within {limit:g} s") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise LLMUnavailable(f"cannot reach the LLM at {self.base_url}: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise LLMTimeout(f"the LLM stopped answering for {s.llm_stream_timeout_s:g} s") from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise LLMUnavailable(f"the LLM connection broke: {exc}") from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM request failed: {exc!r}") from exc
        finally:
            metrics.LLM_STREAMS_ACTIVE.dec()
            if not stats.completed:
                metrics.LLM_STREAMS_CANCELLED_TOTAL.inc()
