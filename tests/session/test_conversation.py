"""End to end over the WebSocket: real STT, TTS, VAD and a real LLM service (the shared ``stack``).

The real-model tier: it confirms the real backends work together on real speech. The connection's behaviour
(turn switching, interruptions, limits, errors) is tested in-process on fake backends (test_connection_*).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.session.conftest import SessionService, sample
from tests.support.speech import is_silent, speech_audio, words
from tests.support.ws_client import VoiceChatClient
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE

pytestmark = pytest.mark.models

QUESTION = "What is the capital of France?"


def _histogram_count(service: SessionService, name: str, **labels: str) -> float:
    return sample(service.metrics(), f"{name}_count", **labels)


async def test_spoken_question_gets_a_spoken_answer(pod_service: SessionService) -> None:
    ttfa_before = _histogram_count(
        pod_service, "voicechat_session_time_to_first_audio_seconds", source="voice"
    )
    stt_before = _histogram_count(pod_service, "voicechat_session_stt_seconds")
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        assert client.ready is not None
        assert client.ready["session_id"]
        assert client.ready["sharing"] == "pod"
        assert client.ready["connect_ms"] < 1000
        started = await client.start(sample_rate=16_000)
        assert started["sample_rate"] == 16_000
        # A microphone's pace, then a second of silence so the VAD ends the turn.
        await client.stream_audio(speech_audio(QUESTION), 16_000, trailing_silence_s=1.0)
        turn = await client.wait_turn(timeout_s=180)

    assert turn.transcript is not None
    assert {"capital", "france"} <= set(words(turn.transcript)), turn.transcript
    assert turn.assistant_deltas, "the reply streams as deltas"
    assert turn.assistant_final, "the final assistant message carries the spoken reply"
    audio_start = next(e for e in turn.events if isinstance(e, dict) and e["type"] == "audio_start")
    assert audio_start["sample_rate"] == OUTPUT_SAMPLE_RATE
    assert turn.audio_seconds > 0.5
    assert not is_silent(turn.audio_samples, OUTPUT_SAMPLE_RATE)
    # Speech events bracket the utterance, and the transcript follows the end of speech.
    kinds = [e["type"] for e in client.events if isinstance(e, dict)]
    assert kinds.index("vad") < kinds.index("transcript")
    metrics = turn.metrics
    assert metrics["source"] == "voice"
    assert not metrics["interrupted"]
    for key in ("endpointing_ms", "stt_ms", "llm_ttft_ms", "tts_first_chunk_ms", "time_to_first_audio_ms"):
        assert (metrics[key] or 0) > 0, (key, metrics)
    assert metrics["time_to_first_audio_ms"] < metrics["turn_ms"]
    assert metrics["audio_ms"] == pytest.approx(turn.audio_seconds * 1000, abs=1)

    after = pod_service.metrics()
    assert (
        sample(after, "voicechat_session_time_to_first_audio_seconds_count", source="voice")
        == ttfa_before + 1
    )
    assert sample(after, "voicechat_session_stt_seconds_count") >= stt_before + 1
    assert sample(after, "voicechat_session_turns_total", source="voice") >= 1
    assert sample(after, "voicechat_session_connect_seconds_count") >= 1


async def test_two_sessions_are_isolated(pod_service: SessionService) -> None:
    # Different voices, different words, and different microphone rates (16 kHz and 48 kHz).
    sessions = {
        "jf_alpha": ("My name is Alice and I like apples.", 16_000),
        "jm_kumo": ("The weather today is cold and rainy.", 48_000),
    }
    audio = {
        voice: speech_audio(text, rate=rate) for voice, (text, rate) in sessions.items()
    }  # made up front

    async def converse(voice: str, rate: int) -> tuple[VoiceChatClient, list[dict[str, str]], str | None]:
        async with VoiceChatClient.connect(pod_service.ws_url) as client:
            started = await client.start(sample_rate=rate, voice=voice)
            assert started["voice"] == voice
            assert started["sample_rate"] == rate
            await client.stream_audio(audio[voice], rate, trailing_silence_s=1.0)
            turn = await client.wait_turn(timeout_s=240)
            assert not is_silent(turn.audio_samples, OUTPUT_SAMPLE_RATE)
            return client, await client.history(), turn.transcript

    (client_a, history_a, transcript_a), (client_b, history_b, transcript_b) = await asyncio.gather(
        *(converse(voice, rate) for voice, (_text, rate) in sessions.items())
    )
    assert client_a.ready is not None
    assert client_b.ready is not None
    assert client_a.ready["session_id"] != client_b.ready["session_id"]
    assert transcript_a is not None
    assert {"alice", "apples"} <= set(words(transcript_a))
    assert transcript_b is not None
    assert {"weather", "cold"} <= set(words(transcript_b))
    for history, own, other in (
        (history_a, transcript_a, transcript_b),
        (history_b, transcript_b, transcript_a),
    ):
        users = [m["content"] for m in history if m["role"] == "user"]
        assert users == [own]
        assert all(other not in m["content"] for m in history)
    # Neither client received anything of the other's turn.
    text_a = " ".join(str(e) for e in client_a.events if isinstance(e, dict))
    text_b = " ".join(str(e) for e in client_b.events if isinstance(e, dict))
    assert "weather" not in text_a.lower()
    assert "alice" not in text_b.lower()


async def test_barge_in_stops_audio_and_truncates_history(pod_service: SessionService) -> None:
    interruption = speech_audio("Stop, please stop talking now.")  # made before the clock starts
    async with VoiceChatClient.connect(pod_service.ws_url) as client:
        await client.start(sample_rate=16_000)
        await client.send({"type": "text", "text": "Tell me a long story about a dragon and a knight."})
        audio_start = await client.wait_for("audio_start", timeout_s=240)
        turn_id = int(audio_start["turn_id"])
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=60)  # the assistant is talking
        # The user talks over the assistant.
        speaking = asyncio.create_task(client.stream_audio(interruption, 16_000, trailing_silence_s=1.0))
        interrupted = await client.wait_for("interrupted", turn_id=turn_id, timeout_s=60)
        assert interrupted["reason"] == "barge_in"
        await speaking
        await client.wait_for("turn_metrics", turn_id=turn_id, timeout_s=30)
        first = client.turn_result(turn_id)
        assert first.metrics["interrupted"]
        index = client.events.index(interrupted)
        next_start = next(
            (
                i
                for i, e in enumerate(client.events)
                if i > index and isinstance(e, dict) and e["type"] == "audio_start"
            ),
            len(client.events),
        )
        assert not any(isinstance(e, bytes) for e in client.events[index:next_start]), (
            "audio after interrupted"
        )
        # What the history keeps is what was sent: a prefix of the generated reply, matching the audio sent.
        assert first.assistant_final is not None
        spoken, generated = words(first.assistant_final), words("".join(first.assistant_deltas))
        assert spoken == generated[: len(spoken)], (spoken, generated)
        assert first.metrics["audio_ms"] == pytest.approx(first.audio_seconds * 1000, abs=1)
        # The interruption became the next user turn; the history holds only the spoken part of the first reply.
        second = await client.wait_for("transcript", final=True, turn_id=turn_id + 1, timeout_s=240)
        assert "stop" in words(second["text"])
        history = await client.history()
        assistant_turns = [m["content"] for m in history if m["role"] == "assistant"]
        if first.assistant_final:
            assert assistant_turns[0] == first.assistant_final


async def test_connect_is_fast_with_pod_sharing(pod_service: SessionService) -> None:
    loads_before = sample(pod_service.metrics(), "voicechat_session_model_loads_total", scope="pod")
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        async with VoiceChatClient.connect(pod_service.ws_url) as client:
            assert client.ready is not None
            timings.append((client.ready["connect_ms"], (time.perf_counter() - started) * 1000))
    after = pod_service.metrics()
    assert sample(after, "voicechat_session_model_loads_total", scope="pod") == loads_before == 1
    assert sample(after, "voicechat_session_model_loads_total", scope="connection") == 0
    # Pod sharing loads nothing at connect: server-side connect is well under the model load time.
    assert max(server for server, _client in timings) < 250, timings
