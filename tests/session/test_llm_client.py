"""The streaming LLM client against small local HTTP servers: deadlines, refusals, and that cancelling a
turn closes the HTTP stream (the engine sees the disconnect and aborts). The real LLM service is exercised
end to end in test_conversation.py and test_llm_outage.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from voicechat_common.localstack import free_port
from voicechat_session.history import ChatMessage
from voicechat_session.llm import (
    LLMClient,
    LLMError,
    LLMThrottled,
    LLMTimeout,
    LLMUnavailable,
    StreamStats,
    parse_sse_line,
)
from voicechat_session.settings import SessionSettings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MESSAGES = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]


def _chunk(text: str) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": text}}]}
    data = f"data: {json.dumps(event)}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


SSE_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1"


def _client(url: str, http: httpx.AsyncClient, **settings: float) -> LLMClient:
    return LLMClient(SessionSettings(llm_url=url, llm_model="m", **settings), http)  # type: ignore[arg-type]


def test_parse_sse_line() -> None:
    assert parse_sse_line('data: {"choices":[{"delta":{"content":"Hi"}}]}') == "Hi"
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line('data: {"choices":[{"delta":{"role":"assistant"}}]}') is None
    with pytest.raises(LLMError):
        parse_sse_line('data: {"error": {"message": "boom"}}')
    with pytest.raises(LLMError):
        parse_sse_line("data: {oops")


async def test_stream_collects_deltas() -> None:
    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEADERS + _chunk("Hello") + _chunk(" there.") + b"0\r\n\r\n")
        await writer.drain()

    deltas: list[str] = []
    async with _server(handler) as url, httpx.AsyncClient() as http:
        stats = StreamStats()
        text = await _client(url, http).stream(MESSAGES, stats, deltas.append)
    assert text == "Hello there."
    assert deltas == ["Hello", " there."]
    assert stats.completed
    assert stats.ttft_s is not None


async def test_no_first_token_is_a_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    async with _server(handler) as url, httpx.AsyncClient() as http:
        with pytest.raises(LLMTimeout):
            await _client(url, http, llm_first_token_timeout_s=0.5).stream(MESSAGES, StreamStats(), print)


async def test_connection_refused_is_unavailable() -> None:
    async with httpx.AsyncClient() as http:
        client = _client(f"http://127.0.0.1:{free_port()}/v1", http)
        with pytest.raises(LLMUnavailable):
            await client.stream(MESSAGES, StreamStats(), print)


async def test_http_errors() -> None:
    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\nloading")
        await writer.drain()

    async with _server(handler) as url, httpx.AsyncClient() as http:
        with pytest.raises(LLMUnavailable, match="503"):
            await _client(url, http).stream(MESSAGES, StreamStats(), print)


async def test_http_429_is_throttled() -> None:
    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with _server(handler) as url, httpx.AsyncClient() as http:
        with pytest.raises(LLMThrottled, match="429") as raised:
            await _client(url, http).stream(MESSAGES, StreamStats(), print)
    assert raised.value.code == "llm_throttled"


async def test_cancelling_closes_the_http_stream() -> None:
    disconnected = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEADERS + _chunk("Once upon a time"))
        await writer.drain()
        # An engine keeps generating until the client goes away; it notices by reading EOF.
        await reader.read()  # the rest of the request, then EOF once the client disconnects
        disconnected.set()

    first = asyncio.Event()
    async with _server(handler) as url, httpx.AsyncClient() as http:
        task = asyncio.create_task(_client(url, http).stream(MESSAGES, StreamStats(), lambda _d: first.set()))
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(disconnected.wait(), 10)


async def test_connection_dropped_before_any_response_is_retried_once() -> None:
    """llama.cpp closes idle keep-alive connections silently: the request never reached the engine."""
    connections = 0

    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            return  # closed without a byte, like a server dropping a stale keep-alive connection
        writer.write(SSE_HEADERS + _chunk("Still here.") + b"0\r\n\r\n")
        await writer.drain()

    async with _server(handler) as url, httpx.AsyncClient() as http:
        text = await _client(url, http).stream(MESSAGES, StreamStats(), lambda _d: None)
    assert text == "Still here."
    assert connections == 2


async def test_connection_dropped_twice_is_reported() -> None:
    async def handler(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        return

    async with _server(handler) as url, httpx.AsyncClient() as http:
        with pytest.raises(LLMUnavailable, match="connection broke"):
            await _client(url, http).stream(MESSAGES, StreamStats(), lambda _d: None)
