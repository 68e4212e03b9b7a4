"""The weight-free backends: scripted STT by pitch, a tone TTS as long as its text, an energy VAD."""

from __future__ import annotations

import time

import numpy as np
import pytest

from voicechat_session.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, resample
from voicechat_session.backends.fake import (
    FAKE_VOICES,
    STT_ERROR,
    TTS_ERROR,
    WINDOW_SAMPLES,
    EnergyVad,
    FakeSTT,
    FakeTTS,
    utterance_tone,
)
from voicechat_session.backends.loader import load_models, warm_up
from voicechat_session.settings import SessionSettings

SCRIPT = ["first", "second", STT_ERROR]


def test_stt_picks_the_transcript_by_pitch_whatever_the_call_order() -> None:
    stt = FakeSTT(SCRIPT)
    silence = np.zeros(STT_SAMPLE_RATE // 4, np.float32)
    # Pre-roll and tail of silence around the tone, as the endpointing cuts it.
    assert stt.transcribe(np.concatenate([silence, utterance_tone(1, 0.5), silence])) == "second"
    assert stt.transcribe(utterance_tone(0, 0.5)) == "first"
    assert stt.transcribe(utterance_tone(1, 0.3)) == "second"
    # Resampled from a 48 kHz microphone: still the same pitch.
    assert stt.transcribe(resample(utterance_tone(1, 0.5, 48_000), 48_000, STT_SAMPLE_RATE)) == "second"
    assert stt.script_index(utterance_tone(9, 0.5)) == 2, "beyond the script: its last entry"
    with pytest.raises(RuntimeError, match="scripted failure"):
        stt.transcribe(utterance_tone(9, 0.5))
    assert stt.transcribe(silence) == ""
    assert stt.transcribe(np.zeros(0, np.float32)) == ""
    with pytest.raises(ValueError, match="at least one"):
        FakeSTT([])


def test_stt_latency_is_spent_in_the_call() -> None:
    stt = FakeSTT(["x"], latency_s=0.1)
    started = time.perf_counter()
    stt.transcribe(utterance_tone(0, 0.2))
    assert time.perf_counter() - started >= 0.1


def test_tts_tone_length_follows_text_and_speed() -> None:
    tts = FakeTTS(ms_per_char=50.0)
    audio = tts.synthesize("Hello there.", "jf_alpha", 1.0)  # 12 characters
    assert audio.dtype == np.float32
    assert audio.size == round(0.6 * TTS_SAMPLE_RATE)
    assert tts.synthesize("Hello there.", "jf_alpha", 2.0).size == round(0.3 * TTS_SAMPLE_RATE)
    assert 0.2 < float(np.sqrt(np.mean(audio**2))) < 0.22  # a 0.3 sine: audible, not clipped
    assert tts.voices == list(FAKE_VOICES)
    with pytest.raises(ValueError, match="unknown voice"):
        tts.synthesize("x", "nobody", 1.0)
    with pytest.raises(RuntimeError, match="scripted failure"):
        tts.synthesize(f"say {TTS_ERROR}", "jf_alpha", 1.0)


def test_energy_vad_one_probability_per_window_across_chunks() -> None:
    stream = EnergyVad(threshold=0.02).stream()
    quiet = np.zeros(WINDOW_SAMPLES * 2, np.float32)
    loud = utterance_tone(0, WINDOW_SAMPLES * 3 / STT_SAMPLE_RATE)
    audio = np.concatenate([quiet, loud, quiet])
    # Odd chunk sizes: windows still line up with the stream, not with the chunks.
    probs = [p for i in range(0, audio.size, 700) for p in stream.process(audio[i : i + 700])]
    assert probs == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    stream.reset()
    assert stream.process(np.zeros(100, np.float32)) == []


def test_loader_selects_the_fakes_and_warm_up_runs_without_weights() -> None:
    settings = SessionSettings(
        stt_backend="fake", tts_backend="fake", vad_backend="energy", fake_stt_transcripts=["hi"]
    )
    models = load_models(settings)
    assert isinstance(models.stt, FakeSTT)
    assert isinstance(models.tts, FakeTTS)
    assert isinstance(models.vad, EnergyVad)
    assert set(warm_up(models, settings)) == {"tts", "vad", "stt"}
