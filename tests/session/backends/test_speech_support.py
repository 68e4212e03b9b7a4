"""The spoken-WAV helper other test suites use (tests/support/speech.py)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.support.speech import (
    active_fraction,
    is_silent,
    read_wav,
    rms,
    rms_dbfs,
    speech_wav,
    words,
    write_wav,
)
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxTTS


def test_espeak_wav_is_cached_padded_pcm16(tmp_path: Path) -> None:
    path = speech_wav(
        "Hello there.", engine="espeak", rate=16_000, lead_s=0.5, tail_s=1.0, cache_dir=tmp_path
    )
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16_000)
    audio, rate = read_wav(path)
    assert rate == 16_000
    assert is_silent(audio[: 8000 - 400], rate)  # leading silence
    assert is_silent(audio[-15_600:], rate)  # trailing silence
    assert not is_silent(audio, rate)
    assert rms_dbfs(audio[8000:-16_000]) > -35

    mtime = path.stat().st_mtime_ns
    assert speech_wav("Hello there.", engine="espeak", rate=16_000, cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not remade
    other = speech_wav("Hello there.", engine="espeak", rate=24_000, cache_dir=tmp_path)
    assert other != path
    assert read_wav(other)[1] == 24_000


@pytest.mark.models
def test_kokoro_wav_at_48k(tmp_path: Path, tts: KokoroOnnxTTS) -> None:
    path = speech_wav(
        "Good morning.", engine="kokoro", rate=48_000, voice="jm_kumo", cache_dir=tmp_path, tts=tts
    )
    audio, rate = read_wav(path)
    assert rate == 48_000
    assert 0.3 < active_fraction(audio, rate) < 0.9
    assert "kokoro" not in path.name  # names are slug + content hash
    assert path.name.startswith("good-morning-")


def test_empty_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        speech_wav("  ", cache_dir=tmp_path)


def test_wav_round_trip_and_levels(tmp_path: Path) -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)).astype(np.float32)
    write_wav(tmp_path / "t.wav", tone, 16_000)
    back, rate = read_wav(tmp_path / "t.wav")
    assert rate == 16_000
    np.testing.assert_allclose(back, tone, atol=1 / 32768)
    assert rms(back) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert rms_dbfs(np.zeros(10, np.float32)) == float("-inf")
    assert is_silent(np.zeros(16_000, np.float32), 16_000)
    assert is_silent((1e-4 * np.ones(16_000)).astype(np.float32), 16_000)


def test_words_normalises_transcripts() -> None:
    assert words("What's the capital of France?") == ["what's", "the", "capital", "of", "france"]
    assert words("Hello, World!  ") == words("hello world")
