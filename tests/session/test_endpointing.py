"""Turn detection on synthetic VAD probabilities (the real Silero model is exercised end to end)."""

from __future__ import annotations

import numpy as np

from voicechat_session.endpointing import (
    Phase,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
)

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


def test_a_pause_carries_the_audio_the_end_will_carry() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=200, min_silence_ms=500, pause_ms=200), WINDOW)
    events = _run(detector, [0.0] * 20 + [0.9] * 30 + [0.0] * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechPaused, SpeechEnded]
    paused, ended = events[1], events[2]
    assert isinstance(paused, SpeechPaused)
    assert isinstance(ended, SpeechEnded)
    assert ended.after_pause
    assert np.array_equal(paused.audio, ended.audio), "work started at the pause is the work the end needs"
    assert paused.speech_ms == ended.speech_ms


def test_speech_after_a_pause_resumes_and_the_end_is_not_after_that_pause() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=200, min_silence_ms=500, pause_ms=200), WINDOW)
    events = _run(detector, [0.9] * 20 + [0.0] * 9 + [0.9] * 20 + [0.0] * 5 + [0.9] * 5 + [0.0] * 20)
    names = [type(e).__name__ for e in events]
    # 288 ms of silence is a pause (then speech resumes); 160 ms is not; the final silence pauses, then ends.
    assert names == [
        "SpeechStarted",
        "SpeechPaused",
        "SpeechResumed",
        "SpeechPaused",
        "SpeechEnded",
    ]
    first_pause, last_pause, ended = events[1], events[3], events[4]
    assert isinstance(first_pause, SpeechPaused)
    assert isinstance(last_pause, SpeechPaused)
    assert isinstance(ended, SpeechEnded)
    assert len(first_pause.audio) < len(ended.audio)
    assert np.array_equal(last_pause.audio, ended.audio)
    assert ended.after_pause


def test_no_pause_events_when_off_or_when_forced() -> None:
    detector = TurnDetector(TurnConfig(min_speech_ms=200, min_silence_ms=500), WINDOW)
    events = _run(detector, [0.9] * 30 + [0.0] * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    cut = TurnDetector(TurnConfig(min_silence_ms=500, max_utterance_s=1.5, pause_ms=200), WINDOW)
    events = _run(cut, [0.9] * 40 + [0.0] * 8)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == 1
    assert ended[0].forced
    assert not ended[0].after_pause
