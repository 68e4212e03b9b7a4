"""The turn's lifecycle, spoken text and report (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from voicechat_session.protocol import OUTPUT_SAMPLE_RATE
from voicechat_session.turn import Turn, TurnState, TurnStateError


async def test_states_move_one_way() -> None:
    voice = Turn(id=1, source="voice", user_end=0.0, audio=np.zeros(10, np.float32))
    assert voice.state is TurnState.TRANSCRIBING
    text = Turn(id=2, source="text", user_end=0.0, text="hi")
    assert text.state is TurnState.QUEUED
    assert not text.interruptible_by_speech, "nothing is said yet: new speech is a new turn, not a barge-in"
    text.advance(TurnState.REPLYING)
    assert text.interruptible_by_speech
    assert text.interrupt("barge_in")
    assert (text.state, text.interrupt_reason, text.active) == (TurnState.INTERRUPTED, "barge_in", False)
    assert not text.interrupt("client"), "an ended turn is not interrupted twice"
    assert text.interrupt_reason == "barge_in"
    with pytest.raises(TurnStateError, match="interrupted → completed"):
        text.advance(TurnState.COMPLETED)
    voice.advance(TurnState.SKIPPED)
    assert not voice.active
    assert not voice.interrupt("client")


async def test_spoken_text_follows_the_audio_sent() -> None:
    turn = Turn(id=1, source="text", user_end=0.0)
    first = turn.add_clause("Paris is the capital of France.", 1000)
    second = turn.add_clause("It has a famous tower and many museums.", 800)
    assert turn.spoken_text() == ""
    turn.sent_samples[first] = 1000
    assert turn.spoken_text() == "Paris is the capital of France."
    turn.sent_samples[second] = 400  # half of the second clause's audio
    assert turn.spoken_text() == "Paris is the capital of France. It has a famous"
    assert turn.audio_ms == pytest.approx(1000 * 1400 / OUTPUT_SAMPLE_RATE)


async def test_report() -> None:
    turn = Turn(id=3, source="voice", user_end=10.0, decided=10.5, audio=np.zeros(10, np.float32))
    turn.stt_s, turn.ttft_s, turn.tts_first_s, turn.first_audio_at = 0.1, 0.2, 0.05, 11.0
    turn.add_clause("Hello.", OUTPUT_SAMPLE_RATE)
    turn.sent_samples[0] = OUTPUT_SAMPLE_RATE
    turn.playback_stalls, turn.playback_stall_s = 2, 0.1234
    report = turn.report(now=12.0)
    assert report.model_dump() == {
        "type": "turn_metrics",
        "turn_id": 3,
        "source": "voice",
        "endpointing_ms": 500.0,
        "stt_ms": 100.0,
        "llm_ttft_ms": 200.0,
        "llm_first_phrase_ms": None,
        "speculation": "none",
        "speculation_head_start_ms": None,
        "tts_first_chunk_ms": 50.0,
        "time_to_first_audio_ms": 1000.0,
        "turn_ms": 2000.0,
        "audio_ms": 1000.0,
        "playback_stalls": 2,
        "playback_stall_ms": 123.4,
        "interrupted": False,
    }
    turn.interrupt("client")
    assert turn.report(now=12.0).interrupted
