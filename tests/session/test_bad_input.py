"""Bad input over the WebSocket: each case gets an ``error`` event with its code; the session survives where
that makes sense, else it closes with the protocol's close code."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from tests.session.conftest import SessionService
from tests.support.ws_client import VoiceChatClient
from voicechat_session.protocol import CloseCode
from voicechat_session.settings import SessionSettings

pytestmark = pytest.mark.models

MAX_FRAME_BYTES = int(SessionSettings.model_fields["max_frame_bytes"].default)


async def _expect_error(client: VoiceChatClient, frame: str | bytes, code: str) -> dict[str, object]:
    mark = len(client.events)
    await client.send_raw(frame)
    error = await client.wait_for("error", after=mark, timeout_s=15)
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
    pod_service: SessionService, frame: str | bytes, code: str
) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        await _expect_error(client, frame, code)
        # Still usable: a valid start is accepted afterwards.
        started = await client.start(sample_rate=16_000)
        assert started["voice"] == client.ready["voice"]  # type: ignore[index]
        assert not client.closed


async def test_bad_audio_and_second_start(pod_service: SessionService) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
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


async def test_audio_faster_than_real_time_is_refused(pod_service: SessionService) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        await client.start(sample_rate=16_000)
        second_of_silence = np.zeros(16_000, dtype=np.int16).tobytes()
        mark = len(client.events)
        for _ in range(12):  # 12 s of audio at once: far beyond 3x real time plus the burst allowance
            await client.send_raw(second_of_silence)
        error = await client.wait_for("error", after=mark, timeout_s=15)
        assert error["code"] == "audio_too_fast"
        assert error["fatal"] is False
        assert not client.closed


async def test_flooding_audio_closes_the_session(pod_service: SessionService) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        await client.start(sample_rate=16_000)
        two_seconds = np.zeros(32_000, dtype=np.int16).tobytes()
        for _ in range(40):  # 80 s of audio in a burst: a misbehaving client
            if client.closed:
                break
            with contextlib.suppress(ConnectionClosed):  # the server may close while we still send
                await client.send_raw(two_seconds)
        code, _reason = await client.wait_closed(timeout_s=30)
        assert code == CloseCode.POLICY_VIOLATION
        fatal = [e for e in client.errors() if e["fatal"]]
        assert fatal
        assert fatal[-1]["code"] == "audio_too_fast"


async def test_frame_beyond_the_transport_limit_closes_1009(pod_service: SessionService) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        await client.send_raw(b"\x00" * (MAX_FRAME_BYTES * 32))
        code, _reason = await client.wait_closed(timeout_s=30)
        assert code == CloseCode.MESSAGE_TOO_BIG
