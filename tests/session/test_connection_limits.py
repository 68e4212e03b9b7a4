"""Session limits and bad input against the in-process service: each case gets an ``error`` event with its
code; the session survives where that makes sense, else it closes with the protocol's close code. Also the
full pod, idle and expired sessions, and the drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.protocol import CloseCode
from voicechat_session.settings import SessionSettings

MAX_FRAME_BYTES = int(SessionSettings.model_fields["max_frame_bytes"].default)
LONG_REPLY = " ".join(f"Part {i} of a reply that takes a while to speak." for i in range(8))


@pytest.fixture
async def service() -> AsyncIterator[InProcessService]:
    async with session_app() as running:
        yield running


async def _expect_error(client: VoiceChatClient, frame: str | bytes, code: str) -> dict[str, object]:
    mark = len(client.events)
    await client.send_raw(frame)
    error = await client.wait_for("error", after=mark, timeout_s=10)
    assert error["code"] == code, error
    assert error["message"]
    assert error["fatal"] is False
    return error


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2, 3]", "invalid_message"),
        ('{"text": "no type"}', "invalid_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "text"}', "invalid_message"),
        ('{"type": "text", "text": "hi", "extra": 1}', "invalid_message"),
        ('{"type": "start", "sample_rate": "fast"}', "invalid_message"),
        ('{"type": "start", "sample_rate": 1000}', "invalid_message"),
        ('{"type": "configure", "voice": "nobody"}', "unknown_voice"),
        ('{"type": "start", "voice": "nobody"}', "unknown_voice"),
        (b"\x00\x00" * 160, "not_started"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "missing-type",
        "unknown-type",
        "missing-field",
        "extra-field",
        "wrong-field-type",
        "rate-out-of-range",
        "unknown-voice-configure",
        "unknown-voice-start",
        "audio-before-start",
    ],
)
async def test_bad_message_gets_an_error_and_the_session_survives(
    service: InProcessService, frame: str | bytes, code: str
) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await _expect_error(client, frame, code)
        # Still usable: a valid start is accepted afterwards, and a turn works.
        started = await client.start(sample_rate=16_000)
        assert started["voice"] == client.ready["voice"]  # type: ignore[index]
        await client.send({"type": "text", "text": "hi"})
        assert (await client.wait_turn(timeout_s=20)).assistant_final == service.llm.reply


async def test_bad_audio_and_second_start(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=16_000)
        await _expect_error(client, json.dumps({"type": "start", "sample_rate": 16_000}), "already_started")
        await _expect_error(client, b"\x00\x01\x02", "odd_length_audio")
        await _expect_error(client, b"\x00" * (MAX_FRAME_BYTES + 2), "frame_too_large")
        await _expect_error(
            client,
            json.dumps({"type": "text", "text": "x" * 1999}).ljust(MAX_FRAME_BYTES + 1),
            "frame_too_large",
        )
        # Even-length audio after all that is accepted silently.
        mark = len(client.events)
        await client.send_raw(b"\x00\x00" * 320)
        assert await client.history()
        assert client.errors(after=mark) == []


async def test_audio_faster_than_real_time_is_refused(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=16_000)
        second_of_silence = np.zeros(16_000, dtype=np.int16).tobytes()
        mark = len(client.events)
        for _ in range(12):  # 12 s of audio at once: far beyond 3x real time plus the burst allowance
            await client.send_raw(second_of_silence)
        error = await client.wait_for("error", after=mark, timeout_s=10)
        assert error["code"] == "audio_too_fast"
        assert error["fatal"] is False
        await client.history()  # answered after every frame before it was handled
        assert len(client.errors(after=mark)) == 1, "the same error is sent at most once a second"
        assert not client.closed


async def test_flooding_audio_closes_the_session(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=16_000)
        two_seconds = np.zeros(32_000, dtype=np.int16).tobytes()
        for _ in range(40):  # 80 s of audio in a burst: a misbehaving client
            if client.closed:
                break
            with contextlib.suppress(ConnectionClosed):  # the server may close while we still send
                await client.send_raw(two_seconds)
        code, _reason = await client.wait_closed(timeout_s=10)
        assert code == CloseCode.POLICY_VIOLATION
        fatal = [e for e in client.errors() if e["fatal"]]
        assert fatal[-1]["code"] == "audio_too_fast"
        # Another session is untouched.
        async with VoiceChatClient.connect(service.ws_url) as other:
            assert await other.history()


async def test_frame_beyond_the_transport_limit_closes_1009(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.send_raw(b"\x00" * (MAX_FRAME_BYTES * 32))
        code, _reason = await client.wait_closed(timeout_s=10)
        assert code == CloseCode.MESSAGE_TOO_BIG


async def test_full_pod_refuses_the_next_connection() -> None:
    async with session_app(max_sessions=1) as service:
        refused_before = metric("voicechat_session_refused_total", reason="server_full")
        assert (await service.get("/readyz")).status_code == 200
        async with VoiceChatClient.connect(service.ws_url) as first:
            assert metric("voicechat_session_active_sessions") == 1
            readyz = await service.get("/readyz")
            assert readyz.status_code == 503
            assert "full" in readyz.json()["reason"]
            async with VoiceChatClient.connect(service.ws_url, wait_ready=False) as second:
                error = await second.wait_for("error", timeout_s=10)
                assert (error["code"], error["fatal"]) == ("server_full", True)
                code, reason = await second.wait_closed(timeout_s=10)
                assert code == CloseCode.TRY_AGAIN_LATER
                assert reason
                assert not any(isinstance(e, dict) and e["type"] == "ready" for e in second.events)
            assert await first.history()
        assert metric("voicechat_session_refused_total", reason="server_full") == refused_before + 1
        deadline = asyncio.get_running_loop().time() + 5
        while (await service.get("/readyz")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, "/readyz back to 200 once a slot frees"
            await asyncio.sleep(0.05)
        assert metric("voicechat_session_active_sessions") == 0


async def test_idle_session_is_closed() -> None:
    async with (
        session_app(idle_timeout_s=0.5) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        code, _reason = await client.wait_closed(timeout_s=5)
        assert code == CloseCode.IDLE_TIMEOUT
        assert client.errors()[-1]["code"] == "idle_timeout"
        assert client.errors()[-1]["fatal"] is True


async def test_a_turn_in_progress_is_not_idle() -> None:
    llm = FakeLLM(reply=LONG_REPLY)
    async with (
        session_app(llm, idle_timeout_s=0.5, output_lead_ms=0) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.send({"type": "text", "text": "talk"})
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=10)
        await asyncio.sleep(1.0)  # twice the idle timeout, while the assistant speaks
        assert not client.closed
        await client.send({"type": "interrupt"})
        code, _reason = await client.wait_closed(timeout_s=5)
        assert code == CloseCode.IDLE_TIMEOUT
        assert service.llm.requests


async def test_old_session_is_closed() -> None:
    async with (
        session_app(max_session_s=1.0) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        # Keep it busy (not idle) until it reaches its maximum age.
        async with asyncio.timeout(5):
            while not client.closed:
                await client.send({"type": "get_history"})
                await asyncio.sleep(0.1)
        assert client.close_code == CloseCode.SESSION_EXPIRED
        assert client.errors()[-1]["code"] == "session_expired"


async def test_drain_lets_the_turn_finish_then_closes() -> None:
    async with session_app(drain_grace_s=30) as service, VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "hello"})
        await client.wait_for("assistant", final=False, timeout_s=10)  # a turn is in progress
        service.registry.draining = True  # what the SIGTERM handler does at once (main.DrainingServer)
        drain = asyncio.create_task(service.registry.drain())
        readyz = await service.get("/readyz")
        assert readyz.status_code == 503
        assert "draining" in readyz.json()["reason"]
        async with VoiceChatClient.connect(service.ws_url, wait_ready=False) as late:
            assert (await late.wait_for("error", timeout_s=10))["code"] == "shutting_down"
            code, _ = await late.wait_closed(timeout_s=10)
            assert code == CloseCode.GOING_AWAY
        turn = await client.wait_turn(timeout_s=20)
        assert not turn.metrics["interrupted"]
        assert turn.assistant_final == service.llm.reply
        code, reason = await client.wait_closed(timeout_s=10)
        assert code == CloseCode.GOING_AWAY
        assert reason
        assert client.errors()[-1]["code"] == "shutting_down"
        await asyncio.wait_for(drain, 10)
        assert len(service.registry) == 0


async def test_drain_interrupts_a_turn_that_outlasts_the_grace_period() -> None:
    llm = FakeLLM(reply=LONG_REPLY)
    async with (
        session_app(llm, drain_grace_s=0.3) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.send({"type": "text", "text": "talk"})
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=10)
        await asyncio.wait_for(service.registry.drain(), 10)
        interrupted = await client.wait_for("interrupted", timeout_s=5)
        assert interrupted["reason"] == "shutdown"
        code, _reason = await client.wait_closed(timeout_s=5)
        assert code == CloseCode.GOING_AWAY
        assert client.turn_result(1).metrics["interrupted"]
