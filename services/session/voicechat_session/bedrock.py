"""Streaming replies from Amazon Bedrock's Converse API (``ConverseStream``) through boto3.

Imported only when ``llm_provider`` is ``bedrock`` (boto3 takes a while to import). Credentials come from
boto3's default chain: on EKS the pod identity (IRSA's ``AWS_WEB_IDENTITY_TOKEN_FILE``/``AWS_ROLE_ARN`` or EKS
Pod Identity's ``AWS_CONTAINER_CREDENTIALS_FULL_URI``) — never from the service's settings.

boto3 is blocking, so each reply's stream is read in a thread of this client's own pool (a long stream must
not occupy the event loop's default executor) and its deltas reach the event loop through a queue.
Cancelling the consuming task (barge-in, a deadline) shuts the HTTP connection down, so Bedrock stops
generating at once instead of finishing a reply nobody hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from voicechat_session import metrics
from voicechat_session.history import ChatMessage
from voicechat_session.llm import LLMError, LLMThrottled, LLMTimeout, LLMUnavailable, StreamStats
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

# Error codes of ClientError (HTTP) and of exception events (mid-stream), compared case-insensitively:
# the HTTP ones are "ThrottlingException", the event ones "throttlingException".
_THROTTLED = {"throttlingexception", "toomanyrequestsexception", "servicequotaexceededexception"}
_UNAVAILABLE = {
    "serviceunavailableexception",
    "internalserverexception",
    "modelnotreadyexception",
    "internalfailure",
}
_TIMEOUT = {"modeltimeoutexception"}

_Item = tuple[str, Any]
"""What the reading thread hands to the event loop: ("event", dict), ("error", exception) or ("end", None)."""


def converse_request(
    messages: Sequence[ChatMessage],
    model_id: str,
    settings: SessionSettings,
    *,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The ``converse_stream`` arguments for a chat history.

    System messages become ``system`` blocks. Converse wants the first message from the user and strictly
    alternating roles: consecutive messages of one role are merged into one message of several text blocks,
    a leading assistant message is dropped (history trimming can leave one), and empty texts are skipped
    (Converse rejects blank blocks). Raises LLMError when no user message remains.
    """
    system = [{"text": m.content} for m in messages if m.role == "system" and m.content.strip()]
    converse: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system" or not m.content.strip():
            continue
        if not converse and m.role == "assistant":
            continue
        if converse and converse[-1]["role"] == m.role:
            converse[-1]["content"].append({"text": m.content})
        else:
            converse.append({"role": m.role, "content": [{"text": m.content}]})
    if not converse:
        raise LLMError("there is no user message to answer")
    request: dict[str, Any] = {
        "modelId": model_id,
        "messages": converse,
        "inferenceConfig": {
            "temperature": settings.llm_temperature,
            "maxTokens": max_tokens if max_tokens is not None else settings.llm_max_tokens,
        },
    }
    if system:
        request["system"] = system
    return request


def map_error(exc: BaseException, where: str) -> LLMError:
    """A boto3/botocore failure as the service's LLM error (its code is what the client sees)."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or exc)
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        text = f"Bedrock {code or 'error'}: {message}"
        if code.lower() in _THROTTLED or status == 429:
            return LLMThrottled(text)
        if code.lower() in _TIMEOUT:
            return LLMTimeout(text)
        if code.lower() in _UNAVAILABLE or (isinstance(status, int) and status >= 500):
            return LLMUnavailable(text)
        return LLMError(text)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return LLMUnavailable(
            f"no AWS credentials for Bedrock ({exc}); on EKS give the pod an IAM role (IRSA or Pod Identity)"
        )
    if isinstance(exc, NoRegionError):
        return LLMUnavailable("no AWS region for Bedrock: set bedrock_region (or AWS_REGION)")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return LLMUnavailable(f"cannot reach Bedrock at {where}: {exc}")
    if isinstance(exc, ReadTimeoutError):
        return LLMTimeout(f"Bedrock stopped answering: {exc}")
    if isinstance(exc, BotoCoreError | OSError):
        return LLMUnavailable(f"the Bedrock connection failed: {exc}")
    return LLMError(f"Bedrock request failed: {exc!r}")


class _Reader:
    """One stream, read in a pool thread; ``cancel`` (from the event loop) shuts its connection down."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item]) -> None:
        self._loop = loop
        self._queue = queue
        self._lock = threading.Lock()
        self._stream: Any = None
        self.cancelled = threading.Event()
        self.finished = False

    def _put(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def run(self, client: Any, request: dict[str, Any]) -> None:
        stream: Any = None
        try:
            response = client.converse_stream(**request)
            with self._lock:
                stream = self._stream = response["stream"]
                if self.cancelled.is_set():  # cancelled while the request was being sent: never read it
                    return
            for event in stream:
                if self.cancelled.is_set():  # cancel() closes the stream; stop reading what is still buffered
                    return
                self._put(("event", event))
            with self._lock:
                # Read to its end: urllib3 returned the connection to the pool for the next reply to reuse.
                self.finished = True
            self._put(("end", None))
        except Exception as exc:  # every failure is handed to the event loop to map
            if not self.cancelled.is_set():
                self._put(("error", exc))
        finally:
            with self._lock:
                if self.cancelled.is_set() and stream is not None and not self.finished:
                    _close_stream(stream)

    def cancel(self) -> None:
        """Stop the stream: its connection is shut down unless it was read to its end."""
        with self._lock:
            self.cancelled.set()
            if self._stream is not None and not self.finished:
                _close_stream(self._stream)


def _close_stream(stream: Any) -> None:
    """Close a botocore EventStream so the server sees the connection go, even while a thread reads it.

    ``EventStream.close()`` closes the urllib3 response, but closing a socket neither wakes a thread blocked
    reading it nor lets the FIN go out until that read returns. urllib3's ``HTTPResponse.shutdown()`` shuts
    the socket down first (and refuses once the connection went back to the pool, so a finished stream's
    reused connection is never touched).
    """
    raw: Any = getattr(stream, "_raw_stream", None)
    with contextlib.suppress(Exception):
        raw.shutdown()
    with contextlib.suppress(Exception):
        stream.close()


class BedrockChatModel:
    """One per pod: a boto3 ``bedrock-runtime`` client (thread-safe, pooled connections)."""

    def __init__(self, settings: SessionSettings) -> None:
        if not settings.llm_model:
            raise ValueError("llm_provider=bedrock needs llm_model (the Bedrock model id)")
        self.settings = settings
        self._model = settings.llm_model
        self.where = (
            settings.bedrock_endpoint_url
            or f"bedrock-runtime in {settings.bedrock_region or 'the SDK region'}"
        )
        # Every open session may stream at once, and a session briefly two (a speculative or superseded
        # reply while its cancelled thread unwinds); boto3's default of 10 connections would queue them.
        connections = 2 * settings.max_sessions + 2
        self._config = Config(
            # A throttled or failed reply is reported at once: a voice turn cannot wait through retries.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=min(10.0, settings.llm_first_token_timeout_s),
            # Between two reads of the stream; the whole-reply deadline is enforced on the event loop.
            read_timeout=settings.llm_stream_timeout_s,
            max_pool_connections=connections,
            user_agent_extra="voicechat-session",
        )
        self._executor = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="bedrock")
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    @property
    def model(self) -> str | None:
        return self._model

    async def resolve_model(self) -> str | None:
        return self._model

    async def _get_client(self) -> Any:
        """The boto3 client, made once in a thread (it reads the service model files and the credential
        environment); raises LLMUnavailable when no region is configured anywhere."""
        async with self._client_lock:
            if self._client is None:
                loop = asyncio.get_running_loop()
                try:
                    self._client = await loop.run_in_executor(self._executor, self._make_client)
                except Exception as exc:  # mapped to a clear LLM error
                    raise map_error(exc, self.where) from exc
            return self._client

    def _make_client(self) -> Any:
        return boto3.session.Session().client(
            "bedrock-runtime",
            region_name=self.settings.bedrock_region,
            endpoint_url=self.settings.bedrock_endpoint_url,
            config=self._config,
        )

    async def stream(
        self, messages: Sequence[ChatMessage], stats: StreamStats, on_delta: Callable[[str], None]
    ) -> str:
        """Stream a reply, calling ``on_delta`` per text delta; returns the whole text.

        Raises LLMUnavailable, LLMThrottled, LLMTimeout or LLMError, with the deadlines of LLMClient.stream.
        """
        return await self._stream(converse_request(messages, self._model, self.settings), stats, on_delta)

    async def check(self, system_prompt: str) -> float:
        """A one-token reply (the system prompt and a greeting): proves region, credentials and model access.

        Returns its time to first token in seconds (the pod's warm TTFT). Raises an LLMError subclass.
        """
        messages = [ChatMessage("system", system_prompt), ChatMessage("user", "Hello")]
        stats = StreamStats()
        await self._stream(
            converse_request(messages, self._model, self.settings, max_tokens=1), stats, lambda _d: None
        )
        return stats.ttft_s if stats.ttft_s is not None else time.perf_counter() - stats.request_started

    async def _stream(
        self, request: dict[str, Any], stats: StreamStats, on_delta: Callable[[str], None]
    ) -> str:
        s = self.settings
        parts: list[str] = []
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        reader = _Reader(loop, queue)
        # Made once per pod (outside the deadlines: it is set-up, not the model's time to answer).
        client = await self._get_client()
        stats.request_started = time.perf_counter()
        started = loop.time()
        metrics.LLM_STREAMS_ACTIVE.inc()
        try:
            async with asyncio.timeout(s.llm_first_token_timeout_s) as timer:
                # Not awaited: run() hands everything, failures included, to the queue.
                try:
                    self._executor.submit(reader.run, client, request)
                except RuntimeError as exc:  # the pool is shut down: the pod is closing
                    raise LLMUnavailable("the Bedrock client is closed") from exc
                while True:
                    kind, item = await queue.get()
                    if kind == "end":
                        break
                    if kind == "error":
                        raise map_error(item, self.where) from item
                    if "metadata" in item:
                        log.debug("Bedrock usage", extra={"usage": item["metadata"].get("usage")})
                    delta = (item.get("contentBlockDelta") or {}).get("delta") or {}
                    text = delta.get("text")
                    if not text:
                        continue
                    if stats.first_token_at is None:
                        stats.first_token_at = time.perf_counter()
                        timer.reschedule(started + s.llm_stream_timeout_s)
                    parts.append(text)
                    on_delta(text)
            stats.completed = True
            return "".join(parts)
        except TimeoutError as exc:
            which = "first token" if stats.first_token_at is None else "complete reply"
            limit = s.llm_first_token_timeout_s if stats.first_token_at is None else s.llm_stream_timeout_s
            raise LLMTimeout(f"no {which} from Bedrock within {limit:g} s") from exc
        finally:
            # Done, failed, timed out or cancelled: an unfinished stream's connection is shut down now.
            reader.cancel()
            metrics.LLM_STREAMS_ACTIVE.dec()
            if not stats.completed:
                metrics.LLM_STREAMS_CANCELLED_TOTAL.inc()

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
