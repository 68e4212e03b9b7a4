"""Endpointing: VAD speech probabilities → user speech start / end, with the utterance's audio (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from voicechat_session.audio import STT_SAMPLE_RATE, Audio

# Audio kept before the detected speech start: Silero needs a few windows to become confident, and cutting
# the first phoneme costs Whisper the first word.
PRE_ROLL_MS = 300
# Trailing silence kept after the last speech window: Whisper likes a little room after the last word.
TAIL_MS = 200
# A speech candidate survives short dips of probability (plosives, robotic test speech).
CANDIDATE_GAP_MS = 100
# Silero's recommended hysteresis: leaving speech needs a probability this much under the threshold.
HYSTERESIS = 0.15


@dataclass(frozen=True)
class TurnConfig:
    threshold: float = 0.5
    min_speech_ms: int = 200
    min_silence_ms: int = 500
    max_utterance_s: float = 30.0
    sample_rate: int = STT_SAMPLE_RATE


class Phase(enum.Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"
    SPEECH = "speech"


@dataclass(frozen=True)
class SpeechStarted:
    pass


@dataclass(frozen=True)
class SpeechEnded:
    audio: Audio
    """The utterance at 16 kHz, with a little pre-roll and tail."""
    speech_ms: float
    """From the first speech window to the last."""
    forced: bool = False
    """Cut at ``max_utterance_s`` rather than ended by silence."""


TurnEvent = SpeechStarted | SpeechEnded


class TurnDetector:
    """Feed audio and the VAD's per-window probabilities for it; get speech start / end events.

    Windows are consecutive ``window_samples`` blocks of the fed audio, in order (the VAD stream's contract),
    so sample positions are derived from window counts and the audio buffer needs no timestamps.
    """

    def __init__(self, config: TurnConfig, window_samples: int) -> None:
        self.config = config
        self.window = window_samples
        self._ms_per_window = 1000.0 * window_samples / config.sample_rate
        self._chunks: list[Audio] = []
        self._buf_start = 0  # absolute sample index of _chunks[0][0]
        self._buf_len = 0
        self._windows = 0  # windows classified so far
        self.phase = Phase.IDLE
        self._speech_start_win = 0
        self._last_speech_win = 0
        self.last_feed_had_speech = False

    @property
    def speech_ms(self) -> float:
        """Duration of the current speech (candidate or confirmed), else 0."""
        if self.phase is Phase.IDLE:
            return 0.0
        return (self._last_speech_win + 1 - self._speech_start_win) * self._ms_per_window

    def utterance_so_far(self) -> Audio:
        """The current speech's audio (for partial transcripts); empty when idle."""
        if self.phase is Phase.IDLE:
            return np.zeros(0, dtype=np.float32)
        return self._slice(
            self._speech_start_win * self.window - self._ms(PRE_ROLL_MS), self._buf_start + self._buf_len
        )

    def reset(self) -> None:
        self.phase = Phase.IDLE
        self._trim_to(self._windows * self.window - self._ms(PRE_ROLL_MS))

    def feed(self, audio: Audio, probs: list[float]) -> list[TurnEvent]:
        if len(audio):
            self._chunks.append(np.asarray(audio, dtype=np.float32))
            self._buf_len += len(audio)
        events: list[TurnEvent] = []
        self.last_feed_had_speech = False
        cfg = self.config
        for prob in probs:
            win = self._windows
            self._windows += 1
            speaking = prob >= cfg.threshold
            if self.phase is not Phase.IDLE and not speaking and prob >= cfg.threshold - HYSTERESIS:
                speaking = True  # still inside the hysteresis band: keep the current speech alive
            if speaking:
                self.last_feed_had_speech = True
            if self.phase is Phase.IDLE:
                if speaking:
                    self.phase = Phase.CANDIDATE
                    self._speech_start_win = win
                    self._last_speech_win = win
            elif speaking:
                self._last_speech_win = win
            if self.phase is Phase.CANDIDATE:
                gap_ms = (win - self._last_speech_win) * self._ms_per_window
                if gap_ms > CANDIDATE_GAP_MS:
                    self.phase = Phase.IDLE
                elif self.speech_ms >= cfg.min_speech_ms:
                    self.phase = Phase.SPEECH
                    events.append(SpeechStarted())
            elif self.phase is Phase.SPEECH:
                silence_ms = (win - self._last_speech_win) * self._ms_per_window
                total_s = (win + 1 - self._speech_start_win) * self._ms_per_window / 1000.0
                if silence_ms >= cfg.min_silence_ms or total_s >= cfg.max_utterance_s:
                    events.append(self._end(forced=silence_ms < cfg.min_silence_ms))
        if self.phase is Phase.IDLE:
            self._trim_to(self._windows * self.window - self._ms(PRE_ROLL_MS))
        return events

    def _end(self, *, forced: bool) -> SpeechEnded:
        start = self._speech_start_win * self.window - self._ms(PRE_ROLL_MS)
        end = (self._last_speech_win + 1) * self.window + self._ms(TAIL_MS)
        if forced:
            end = self._windows * self.window
        audio = self._slice(start, end)
        speech_ms = (self._last_speech_win + 1 - self._speech_start_win) * self._ms_per_window
        self.phase = Phase.IDLE
        return SpeechEnded(audio=audio, speech_ms=speech_ms, forced=forced)

    def _ms(self, ms: float) -> int:
        return int(self.config.sample_rate * ms / 1000)

    def _slice(self, start: int, end: int) -> Audio:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        buf = np.concatenate(self._chunks)
        self._chunks = [buf]
        lo = max(0, start - self._buf_start)
        hi = max(lo, min(len(buf), end - self._buf_start))
        return buf[lo:hi].copy()

    def _trim_to(self, start: int) -> None:
        """Drop buffered audio before absolute sample ``start``."""
        drop = start - self._buf_start
        if drop <= 0 or not self._chunks:
            return
        buf = np.concatenate(self._chunks)
        drop = min(drop, len(buf))
        self._chunks = [buf[drop:]] if drop < len(buf) else []
        self._buf_start += drop
        self._buf_len = len(buf) - drop
