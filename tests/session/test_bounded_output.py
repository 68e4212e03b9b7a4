"""Bounded memory per connection (issue 13): a client that stops reading cannot grow the process, and its
session ends without its cooperation; repeated history requests coalesce; error floods are throttled; turns
per minute are limited; half-open HTTP connections are dropped."""

from __future__ import annotations

import asyncio
import contextlib
import json

import websockets

from tests.support.abuse import flood, non_reading_client, wait_until
from tests.support.fake_llm import FakeLLM
from tests.support.resources import rss_bytes
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.protocol import CloseCode

ABORT_REASONS = ("send_timeout", "output_overflow", "close_timeout")


def aborted_total() -> float:
    return sum(metric("voicechat_session_aborted_total", reason=r) for r in ABORT_REASONS)


async def test_a_history_flood_from_a_non_reading_client_stays_bounded_and_ends() -> None:
    """Issue 13's attack: tiny requests with large answers, never read (+0.9 GB in 15 s, session never
    removed). Now the answers coalesce, and the session's age limit removes it without the client's help."""
    async with session_app(send_timeout_s=1.0, max_session_s=6.0, idle_timeout_s=60) as service:
        async with non_reading_client(service.ws_url) as ws:
            for i in range(5):  # a history worth answering: thousands of characters
                await ws.send(json.dumps({"type": "text", "text": f"{i} " + "y" * 1990}))
            await wait_until(lambda: len(service.llm.requests) >= 1, 20, "a turn")
            rss_before = rss_bytes()
            sent = await flood(ws, seconds=5)
            growth = rss_bytes() - rss_before
            await wait_until(lambda: len(service.registry) == 0, 15, "the non-reading session to end")
        assert sent > 1000
        assert growth < 64 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB under {sent} history requests"
        print(f"history flood: {sent} requests in 5 s, RSS growth {growth / 2**20:.1f} MiB")


async def test_a_client_that_stops_reading_audio_is_aborted() -> None:
    """Audio far ahead of real time into a client that does not read: the output bound (or the send
    deadline) aborts the transport and unregisters the session."""
    llm = FakeLLM(reply=" ".join(f"Sentence {i} of a long reply to fill the socket." for i in range(12)))
    async with session_app(
        llm,
        send_timeout_s=1.0,
        max_output_bytes=262_144,
        output_lead_ms=60_000,
        fake_tts_ms_per_char=200.0,
    ) as service:
        before = aborted_total()
        async with non_reading_client(service.ws_url) as ws:
            await ws.send(json.dumps({"type": "text", "text": "tell me everything"}))
            await wait_until(lambda: len(service.registry) == 0, 30, "the session to be aborted")
        assert aborted_total() == before + 1


async def test_history_requests_coalesce() -> None:
    async with session_app() as service, VoiceChatClient.connect(service.ws_url) as client:
        mark = len(client.events)
        for _ in range(200):
            await client.send({"type": "get_history"})
        await client.history()
        answers = [e for e in client.events[mark:] if isinstance(e, dict) and e["type"] == "history"]
        assert 1 <= len(answers) < 200


async def test_error_floods_are_throttled_then_closed() -> None:
    async with (
        session_app(max_errors_per_min=20) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        suppressed = metric("voicechat_session_errors_suppressed_total")
        for _ in range(60):
            with contextlib.suppress(websockets.ConnectionClosed):
                await client.send_raw("{not json")
        code, _ = await client.wait_closed(timeout_s=10)
        assert code == CloseCode.POLICY_VIOLATION
        shown = [e for e in client.errors() if not e["fatal"]]
        assert len(shown) <= 2 * service.settings.max_errors_per_s
        assert client.errors()[-1]["code"] == "rate_limited"
        assert metric("voicechat_session_errors_suppressed_total") > suppressed


async def test_turns_per_minute_are_limited() -> None:
    async with session_app(max_turns_per_min=2) as service, VoiceChatClient.connect(service.ws_url) as client:
        for _ in range(2):
            mark = len(client.events)
            await client.send({"type": "text", "text": "hi"})
            await client.wait_turn(after=mark, timeout_s=20)
        await client.send({"type": "text", "text": "one more"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == "rate_limited"
        assert error["fatal"] is False
        assert len(service.llm.requests) == 2


async def test_half_open_http_connections_are_dropped() -> None:
    async with session_app(handshake_timeout_s=0.5) as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        before = metric("voicechat_session_slow_handshakes_total")
        streams = [await asyncio.open_connection(host, int(port)) for _ in range(20)]
        for _, writer in streams:
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
        for reader, _ in streams:
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed by the server
        for _, writer in streams:
            writer.close()
        assert metric("voicechat_session_slow_handshakes_total") == before + 20


TEXTS = 20


async def test_superseded_texts_never_make_an_oversized_llm_message() -> None:
    """Issue 13: 60 texts whose replies were superseded made one 119,089-character user message (budget
    8,000). Now every message sent to the LLM stays within history_max_chars (here 20 x 2,000 characters)."""
    llm = FakeLLM(first_token_delay_s=0.3)
    async with (
        session_app(
            llm, max_turns_per_min=1000, max_llm_tokens_per_min=1_000_000, max_errors_per_s=100
        ) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        for i in range(TEXTS):
            await client.send({"type": "text", "text": f"{i} " + "t" * 1990})
            # Superseded only once its request reached the LLM: each reply is cut before a word of it.
            await wait_until(lambda: len(service.llm.requests) > i, 20, f"LLM request {i + 1}")  # noqa: B023
        await client.wait_for("turn_metrics", turn_id=TEXTS, timeout_s=60)
        largest = max(len(m["content"]) for r in service.llm.requests for m in r["messages"][1:])
        assert largest <= service.settings.history_max_chars
        print(f"largest message sent to the LLM: {largest} characters ({len(service.llm.requests)} requests)")
