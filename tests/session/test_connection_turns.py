"""Turns over a real WebSocket against the in-process service (fake STT/TTS/VAD, scripted LLM): typed and
spoken turns, barge-in, interrupt, superseded turns, reset, configure, and stage failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import SCRIPT, InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.backends.fake import TTS_ERROR, FakeTTS, utterance_tone

RATE = 16_000
LONG_REPLY = " ".join(f"Sentence number {i} of a long story, told slowly." for i in range(12))
SHORT_REPLY = "Paris is the capital of France."


def expected_audio_s(text: str, speed: float = 1.0) -> float:
    """Reply audio of the fake TTS at its default rate (per clause; clauses here end at punctuation)."""
    return FakeTTS().duration_s(text, speed)


def kinds(client: VoiceChatClient, after: int = 0) -> list[str]:
    return [e["type"] if isinstance(e, dict) else "<audio>" for e in client.events[after:]]


async def wait_audio_frames(client: VoiceChatClient, count: int, after: int = 0) -> None:
    """Until ``count`` binary frames have arrived after index ``after`` (the assistant is audibly talking)."""
    await client.wait_event(
        lambda _e: sum(isinstance(e, bytes) for e in client.events[after:]) >= count,
        after=after,
        timeout_s=20,
    )


async def speak(client: VoiceChatClient, index: int, seconds: float = 0.6, silence_s: float = 0.8) -> None:
    """Say scripted utterance ``index`` at a microphone's pace, then silence that ends the turn."""
    await client.stream_audio(utterance_tone(index, seconds, RATE), RATE, trailing_silence_s=silence_s)


@pytest.fixture
async def service() -> AsyncIterator[InProcessService]:
    async with session_app(FakeLLM(reply=SHORT_REPLY, replies={"story": LONG_REPLY})) as running:
        yield running


async def test_typed_turn_streams_a_reply_and_records_history(service: InProcessService) -> None:
    turns_before = metric("voicechat_session_turns_total", source="text")
    async with VoiceChatClient.connect(service.ws_url) as client:
        assert client.ready is not None
        assert client.ready["voices"] == service.pod.voices
        await client.send({"type": "text", "text": "Where is Paris?"})
        turn = await client.wait_turn(timeout_s=20)
        assert turn.transcript is None
        assert "".join(turn.assistant_deltas) == SHORT_REPLY
        assert turn.assistant_final == SHORT_REPLY
        # The tone TTS makes audio exactly as long as the text says: all of it was sent.
        assert turn.audio_seconds == pytest.approx(expected_audio_s(SHORT_REPLY), abs=0.01)
        assert turn.metrics["audio_ms"] == pytest.approx(turn.audio_seconds * 1000, abs=1)
        assert not turn.metrics["interrupted"]
        assert turn.metrics["stt_ms"] is None
        assert turn.metrics["time_to_first_audio_ms"] > 0
        order = [k for k in kinds(client) if k != "<audio>"]
        assert order.index("audio_start") < order.index("audio_end") < order.index("turn_metrics")
        assert await client.history() == [
            {"role": "system", "content": service.pod.system_prompt},
            {"role": "user", "content": "Where is Paris?"},
            {"role": "assistant", "content": SHORT_REPLY},
        ]
    assert metric("voicechat_session_turns_total", source="text") == turns_before + 1
    assert service.llm.requests[-1]["messages"][-1] == {"role": "user", "content": "Where is Paris?"}


async def test_spoken_turn_is_endpointed_transcribed_and_answered(service: InProcessService) -> None:
    ttfa_before = metric("voicechat_session_time_to_first_audio_seconds_count", source="voice")
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=48_000)
        await client.stream_audio(utterance_tone(0, 0.6, 48_000), 48_000, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.transcript == SCRIPT[0]
        assert turn.assistant_final == SHORT_REPLY
        vad = [e["speaking"] for e in client.events if isinstance(e, dict) and e["type"] == "vad"]
        assert vad == [True, False]
        order = kinds(client)
        assert order.index("vad") < order.index("transcript") < order.index("assistant")
        m = turn.metrics
        assert m["source"] == "voice"
        # Endpointing waits for vad_min_silence_ms of silence after the last speech.
        assert m["endpointing_ms"] >= service.settings.vad_min_silence_ms * 0.9
        assert m["stt_ms"] is not None
        assert m["time_to_first_audio_ms"] >= m["endpointing_ms"]
    assert metric("voicechat_session_time_to_first_audio_seconds_count", source="voice") == ttfa_before + 1


async def test_noise_is_not_a_turn() -> None:
    # The VAD hears "speech" in a faint tone, the STT no words in it (like Whisper on a hum): no reply.
    async with (
        session_app(vad_energy_threshold=0.003) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(0, 0.6, RATE, amplitude=0.005), RATE, trailing_silence_s=0.8)
        transcript = await client.wait_for("transcript", final=True, timeout_s=10)
        assert transcript["text"] == ""
        assert await client.history() == [{"role": "system", "content": service.pod.system_prompt}]
        assert "assistant" not in kinds(client)
        assert "turn_metrics" not in kinds(client)
        assert service.llm.requests == []


async def test_partial_transcripts_while_speaking() -> None:
    async with (
        session_app(partial_transcripts=True) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await speak(client, 2, seconds=2.5)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.partials, "a partial transcript arrives while the user speaks"
        assert set(turn.partials) == {SCRIPT[2]}
        assert turn.transcript == SCRIPT[2]
        first_partial = next(
            i for i, e in enumerate(client.events) if isinstance(e, dict) and e.get("final") is False
        )
        last_vad = max(i for i, e in enumerate(client.events) if isinstance(e, dict) and e["type"] == "vad")
        assert first_partial < last_vad, "partials arrive before the end of speech"


async def test_barge_in_stops_audio_and_keeps_only_what_was_sent(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=RATE)
        await client.send({"type": "text", "text": "Tell me a story."})
        audio_start = await client.wait_for("audio_start", timeout_s=20)
        await wait_audio_frames(client, 5)  # the assistant is talking (80 ms frames)
        await speak(client, 1)
        interrupted = await client.wait_for("interrupted", turn_id=audio_start["turn_id"], timeout_s=10)
        assert interrupted["reason"] == "barge_in"
        first = client.turn_result(audio_start["turn_id"])
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
        await client.wait_for("turn_metrics", turn_id=audio_start["turn_id"], timeout_s=10)
        first = client.turn_result(audio_start["turn_id"])
        assert first.metrics["interrupted"]
        # Paced output: far less than the whole reply left before the barge-in.
        assert 0 < first.audio_seconds < expected_audio_s(LONG_REPLY) / 2
        assert first.assistant_final
        assert LONG_REPLY.startswith(first.assistant_final.rstrip(".,"))
        await client.wait_for("turn_metrics", turn_id=audio_start["turn_id"] + 1, timeout_s=20)
        second = client.turn_result(audio_start["turn_id"] + 1)
        assert second.transcript == SCRIPT[1]
        history = await client.history()
        assert [m["content"] for m in history[1:4]] == ["Tell me a story.", first.assistant_final, SCRIPT[1]]
    assert metric("voicechat_session_interruptions_total", reason="barge_in") >= 1


async def test_short_sound_while_the_assistant_speaks_is_ignored(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=RATE)
        await client.send({"type": "text", "text": "Tell me a story."})
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=20)
        mark = len(client.events)
        # 250 ms: above vad_min_speech_ms (a speech event), below barge_in_min_speech_ms (300).
        await speak(client, 1, seconds=0.25)
        await client.wait_for("vad", speaking=False, after=mark, timeout_s=10)
        # Frames are handled in order: when the interrupt is, the short sound was too. Had it barged in,
        # the turn would be over and this interrupt would interrupt nothing.
        await client.send({"type": "interrupt"})
        interrupted = await client.wait_for("interrupted", after=mark, timeout_s=10)
        assert interrupted["reason"] == "client"
        assert "transcript" not in kinds(client, mark)


async def test_interrupt_closes_the_llm_stream(service: InProcessService) -> None:
    service.llm.token_delay_s = 0.05  # still generating when the interrupt arrives
    cancelled_metric = metric("voicechat_session_llm_streams_cancelled_total")
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "Tell me a story."})
        first = await client.wait_for("assistant", final=False, timeout_s=20)
        mark = len(client.events)
        await client.send({"type": "interrupt"})
        interrupted = await client.wait_for("interrupted", after=mark, timeout_s=10)
        assert interrupted == {"type": "interrupted", "turn_id": first["turn_id"], "reason": "client"}
        turn = await client.wait_turn(after=mark, timeout_s=10)
        assert turn.metrics["interrupted"]
        index = client.events.index(interrupted)
        assert not any(isinstance(e, bytes) for e in client.events[index:])
        # The LLM saw its stream closed before the end; the service counts it.
        await asyncio.wait_for(service.llm.stream_cut.wait(), 5)
        assert service.llm.cancelled == 1
        assert service.llm.active == 0
        assert metric("voicechat_session_llm_streams_cancelled_total") == cancelled_metric + 1
        assert metric("voicechat_session_llm_streams_active") == 0
        # An interrupt with nothing to interrupt is harmless; the session goes on.
        await client.send({"type": "interrupt"})
        mark = len(client.events)
        await client.send({"type": "text", "text": "Where is Paris?"})
        assert (await client.wait_turn(after=mark, timeout_s=20)).assistant_final == SHORT_REPLY
        assert client.errors() == []


async def test_a_new_typed_turn_supersedes_the_current_one(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "Tell me a story."})
        await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=20)
        await client.send({"type": "text", "text": "Where is Paris?"})
        interrupted = await client.wait_for("interrupted", turn_id=1, timeout_s=10)
        assert interrupted["reason"] == "superseded"
        second = await client.wait_for("turn_metrics", turn_id=2, timeout_s=20)
        assert not second["interrupted"]
        first = client.turn_result(1)
        history = await client.history()
        # In order: the first reply (as far as it was sent) before the second question.
        assert [m["content"] for m in history[1:]] == [
            "Tell me a story.",
            first.assistant_final,
            "Where is Paris?",
            SHORT_REPLY,
        ]


async def test_speech_before_the_last_utterance_is_transcribed_joins_it() -> None:
    async with (
        session_app(fake_stt_latency_ms=1500) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await speak(client, 2)  # turn 1 ends; its slow transcription starts
        await client.wait_for("vad", speaking=False, timeout_s=10)
        await speak(client, 2)  # more words before turn 1 is transcribed
        interrupted = await client.wait_for("interrupted", turn_id=1, timeout_s=10)
        assert interrupted["reason"] == "superseded"
        turn = await client.wait_for("turn_metrics", turn_id=2, timeout_s=20)
        assert not turn["interrupted"]
        transcripts = [e for e in client.events if isinstance(e, dict) and e["type"] == "transcript"]
        assert [(t["turn_id"], t["text"]) for t in transcripts] == [(2, SCRIPT[2])]
        history = await client.history()
        assert [m["role"] for m in history] == ["system", "user", "assistant"]
        assert service.llm.requests[-1]["messages"][-1]["content"] == SCRIPT[2]


async def test_reset_interrupts_and_clears_history(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "Where is Paris?"})
        await client.wait_turn(timeout_s=20)
        await client.send({"type": "text", "text": "Tell me a story."})
        await client.wait_event(lambda e: isinstance(e, bytes), after=len(client.events), timeout_s=20)
        mark = len(client.events)
        await client.send({"type": "reset"})
        interrupted = await client.wait_for("interrupted", after=mark, timeout_s=10)
        assert interrupted["reason"] == "reset"
        await client.wait_for("history_cleared", after=mark, timeout_s=10)
        await client.wait_turn(after=mark, timeout_s=10)
        # The interrupted reply does not come back into the cleared history.
        assert await client.history() == [{"role": "system", "content": service.pod.system_prompt}]
        mark = len(client.events)
        await client.send({"type": "text", "text": "Where is Paris?"})
        await client.wait_turn(after=mark, timeout_s=20)
        assert service.llm.requests[-1]["messages"] == [
            {"role": "system", "content": service.pod.system_prompt},
            {"role": "user", "content": "Where is Paris?"},
        ]


async def test_configure_changes_voice_and_speed_from_the_next_clause(service: InProcessService) -> None:
    async with VoiceChatClient.connect(service.ws_url) as client:
        mark = len(client.events)
        await client.send({"type": "configure", "voice": "jm_kumo", "speed": 2.0})
        configured = await client.wait_for("started", after=mark, timeout_s=10)
        assert (configured["voice"], configured["speed"]) == ("jm_kumo", 2.0)
        await client.send({"type": "text", "text": "Where is Paris?"})
        turn = await client.wait_turn(timeout_s=20)
        # Twice the speed: half the audio.
        assert turn.audio_seconds == pytest.approx(expected_audio_s(SHORT_REPLY, 2.0), abs=0.01)


async def test_failed_transcription_is_reported_and_the_session_goes_on(service: InProcessService) -> None:
    errors_before = metric("voicechat_session_errors_total", code="stt_failed")
    async with VoiceChatClient.connect(service.ws_url) as client:
        await client.start(sample_rate=RATE)
        await speak(client, SCRIPT.index("<error>"))
        error = await client.wait_for("error", timeout_s=10)
        assert (error["code"], error["fatal"]) == ("stt_failed", False)
        mark = len(client.events)
        await speak(client, 0)
        turn = await client.wait_turn(after=mark, timeout_s=20)
        assert turn.transcript == SCRIPT[0]
        assert turn.assistant_final == SHORT_REPLY
    assert metric("voicechat_session_errors_total", code="stt_failed") == errors_before + 1


async def test_failed_synthesis_is_reported_and_the_session_goes_on() -> None:
    llm = FakeLLM(reply=SHORT_REPLY, replies={"break": f"First part. Then {TTS_ERROR} here."})
    async with session_app(llm) as service, VoiceChatClient.connect(service.ws_url) as client:
        await client.send({"type": "text", "text": "break it"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == "tts_failed"
        turn = await client.wait_turn(timeout_s=10)
        assert turn.assistant_final == "First part."
        assert turn.audio_seconds == pytest.approx(expected_audio_s("First part."), abs=0.01)
        mark = len(client.events)
        await client.send({"type": "text", "text": "again"})
        assert (await client.wait_turn(after=mark, timeout_s=20)).assistant_final == SHORT_REPLY


async def test_sessions_are_isolated(service: InProcessService) -> None:
    async def converse(voice: str, index: int, rate: int) -> tuple[VoiceChatClient, list[dict[str, str]]]:
        async with VoiceChatClient.connect(service.ws_url) as client:
            await client.start(sample_rate=rate, voice=voice)
            await client.stream_audio(utterance_tone(index, 0.6, rate), rate, trailing_silence_s=0.8)
            await client.wait_turn(timeout_s=20)
            return client, await client.history()

    (a, history_a), (b, history_b) = await asyncio.gather(
        converse("jf_alpha", 0, 16_000), converse("jm_kumo", 2, 48_000)
    )
    assert [m["content"] for m in history_a if m["role"] == "user"] == [SCRIPT[0]]
    assert [m["content"] for m in history_b if m["role"] == "user"] == [SCRIPT[2]]
    assert a.ready is not None
    assert b.ready is not None
    assert a.ready["session_id"] != b.ready["session_id"]
    assert len(service.registry) == 0
