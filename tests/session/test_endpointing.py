"""Turn detection on synthetic VAD probabilities (the real Silero model is exercised end to end)."""

from __future__ import annotations

import numpy as np

from voicechat_session.endpointing import Phase, SpeechEnded, SpeechStarted, TurnConfig, TurnDetector

WINDOW = 512  # 32 ms at 16 kHz


def _run(detector: TurnDetector, probs: list[float]) -> list[object]:
    events: list[object] = []
    for i, p in enumerate(probs):
        audio = np.full(WINDOW, i, dtype=np.float32)  # sample value = window index, to check the cut
        events += detector.feed(audio, [p])
    return events


def test_speech_start_and_end_with_the_utterance_audio() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=200, min_silence_ms=500), WINDOW)
    probs = [0.0] * 20 + [0.9] * 30 + [0.0] * 20
    events = _run(detector, probs)
    assert isinstance(events[0], SpeechStarted)
    ended = events[1]
    assert isinstance(ended, SpeechEnded)
    assert not ended.forced
    assert ended.speech_ms == 30 * 32
    windows = set(ended.audio.astype(int).tolist())
    assert set(range(20, 50)) <= windows, "all speech windows are in the utterance"
    assert min(windows) >= 20 - 10, "pre-roll of about 300 ms"
    assert detector.phase is Phase.IDLE


def test_short_bursts_and_short_pauses() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=200, min_silence_ms=500), WINDOW)
    # A 96 ms click is not speech.
    assert _run(detector, [0.9] * 3 + [0.0] * 30) == []
    # A 300 ms pause inside speech does not end the turn.
    events = _run(detector, [0.9] * 20 + [0.0] * 9 + [0.9] * 20 + [0.0] * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]


def test_hysteresis_keeps_speech_alive() -> None:
    detector = TurnDetector(TurnConfig(threshold=0.5, min_speech_ms=100, min_silence_ms=300), WINDOW)
    events = _run(detector, [0.9] * 10 + [0.4] * 30 + [0.1] * 15)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == 1
    assert ended[0].speech_ms == 40 * 32


def test_long_utterance_is_cut() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=100, min_silence_ms=500, max_utterance_s=2.0), WINDOW)
    events = _run(detector, [0.9] * 100)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert ended
    assert ended[0].forced
    assert 1.9 <= ended[0].audio.size / 16_000 <= 2.5


def test_idle_buffer_stays_bounded() -> None:
    detector = TurnDetector(TurnConfig(), WINDOW)
    _run(detector, [0.0] * 2000)
    assert detector.utterance_so_far().size == 0
    assert detector._buf_len <= 16_000  # only the pre-roll is kept while nobody speaks
