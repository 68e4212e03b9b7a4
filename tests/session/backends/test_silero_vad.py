"""Silero VAD v6 streaming: speech found in speech, none in silence or noise, same as faster-whisper's batch."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.vad import get_speech_timestamps, get_vad_model

from tests.session.backends.conftest import SENTENCES
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.silero_vad import WINDOW_SAMPLES, SileroVad

pytestmark = pytest.mark.models
THRESHOLD = 0.5


def feed(vad: SileroVad, audio: Audio, seed: int = 0, max_chunk: int = 3000) -> np.ndarray:
    """Stream ``audio`` in random chunk sizes, as WebSocket frames arrive."""
    stream = vad.stream()
    rng = np.random.default_rng(seed)
    probs: list[float] = []
    pos = 0
    while pos < audio.size:
        size = int(rng.integers(1, max_chunk))
        probs += stream.process(audio[pos : pos + size])
        pos += size
    assert stream.pending_samples == audio.size % WINDOW_SAMPLES
    return np.array(probs)


def whole_windows(audio: Audio) -> Audio:
    return audio[: audio.size // WINDOW_SAMPLES * WINDOW_SAMPLES]


def test_finds_speech_where_it_is(vad: SileroVad, utterances: dict[str, Audio]) -> None:
    audio = utterances[SENTENCES[0]]  # 0.5 s silence, speech, 1 s silence
    probs = feed(vad, audio)
    assert probs.size == audio.size // WINDOW_SAMPLES
    speech = np.flatnonzero(probs >= THRESHOLD) * WINDOW_SAMPLES / STT_SAMPLE_RATE
    assert speech.size > 0.6 * (audio.size / STT_SAMPLE_RATE - 1.5) / (WINDOW_SAMPLES / STT_SAMPLE_RATE)
    assert 0.3 < speech[0] < 0.8
    assert speech[-1] < audio.size / STT_SAMPLE_RATE - 0.7
    assert probs[-10:].max() < THRESHOLD  # the trailing silence ends the turn


def test_no_speech_in_silence_or_noise(vad: SileroVad) -> None:
    rng = np.random.default_rng(1)
    silence = np.zeros(3 * STT_SAMPLE_RATE, np.float32)
    hiss = (0.01 * rng.standard_normal(3 * STT_SAMPLE_RATE)).astype(np.float32)
    loud_noise = (0.2 * rng.standard_normal(3 * STT_SAMPLE_RATE)).astype(np.float32)
    hum = (0.3 * np.sin(2 * np.pi * 50 * np.arange(3 * STT_SAMPLE_RATE) / STT_SAMPLE_RATE)).astype(np.float32)
    for name, audio in {"silence": silence, "hiss": hiss, "noise": loud_noise, "hum": hum}.items():
        probs = feed(vad, audio)
        assert probs.max() < THRESHOLD, name


def test_streaming_matches_faster_whisper_batch(vad: SileroVad, utterances: dict[str, Audio]) -> None:
    for seed, text in enumerate(SENTENCES):
        audio = whole_windows(utterances[text])
        batch = np.asarray(get_vad_model()(audio.copy())).reshape(-1)
        streamed = feed(vad, audio, seed=seed)
        assert streamed.shape == batch.shape
        # faster-whisper zeroes the last 64 samples of its final window: compare all windows before it.
        np.testing.assert_allclose(streamed[:-1], batch[:-1], atol=1e-4)


def test_chunking_does_not_matter(vad: SileroVad, utterances: dict[str, Audio]) -> None:
    audio = utterances[SENTENCES[1]]
    whole = vad.stream().process(audio)
    tiny = feed(vad, audio, seed=7, max_chunk=40)  # 2.5 ms frames
    np.testing.assert_allclose(tiny, whole, atol=1e-5)


def test_streams_are_independent_and_reset(vad: SileroVad, utterances: dict[str, Audio]) -> None:
    speech = utterances[SENTENCES[2]]
    silence = np.zeros_like(speech)
    a, b = vad.stream(), vad.stream()
    got_a: list[float] = []
    got_b: list[float] = []
    for pos in range(0, speech.size, 1600):  # interleaved, as two connections on one pod
        got_a += a.process(speech[pos : pos + 1600])
        got_b += b.process(silence[pos : pos + 1600])
    np.testing.assert_allclose(got_a, vad.stream().process(speech), atol=1e-5)
    assert max(got_b) < THRESHOLD
    a.reset()
    assert a.pending_samples == 0
    np.testing.assert_allclose(a.process(speech), got_a, atol=1e-5)


def test_agrees_with_faster_whisper_speech_timestamps(vad: SileroVad, utterances: dict[str, Audio]) -> None:
    audio = utterances[SENTENCES[0]]
    segments = get_speech_timestamps(audio, threshold=THRESHOLD, min_silence_duration_ms=500, speech_pad_ms=0)
    assert len(segments) == 1
    probs = vad.stream().process(audio)
    first = next(i for i, p in enumerate(probs) if p >= THRESHOLD)
    assert first * WINDOW_SAMPLES == segments[0]["start"]
