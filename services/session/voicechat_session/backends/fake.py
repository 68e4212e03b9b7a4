"""Fake pipeline stages for tests and weight-free demos (``stt_backend=fake``, ``tts_backend=fake``,
``vad_backend=energy``), in the spirit of livekit/agents' fake STT/TTS and pipecat's test services.

They load nothing and are deterministic: the STT returns scripted transcripts, the TTS a tone whose length
follows the text, each after a configurable latency spent *in the worker thread* (so it occupies a pool slot
exactly as a real model call does, and cancellation and priorities behave as in production). The energy VAD
calls a window speech when its RMS level crosses a threshold, so a test speaks by sending a tone.

Which scripted transcript an utterance gets is chosen by the pitch of the tone spoken (see
:func:`utterance_tone`), not by call order: warm-up, partial transcripts and concurrent sessions cannot shift
the script, and a partial transcript of an utterance is the same text as its final one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from voicechat_session.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, Audio

FAKE_VOICES = ("jf_alpha", "jm_kumo", "af_heart")
"""The fake TTS's voices (the default ``tts_voice`` is among them)."""
STT_ERROR = "<error>"
"""A scripted transcript that makes that transcription raise (tests the ``stt_failed`` path)."""
TTS_ERROR = "TTSFAIL"
"""Text containing this makes the fake TTS raise (tests the ``tts_failed`` path)."""
QUIET_RMS = 0.005
"""Audio quieter than this is noise: the fake STT hears no words in it (like Whisper on silence)."""
TONE_HZ = 440.0
"""The fake TTS's tone."""
SCRIPT_BASE_HZ = 200.0
SCRIPT_STEP_HZ = 100.0
"""Utterance tone of scripted transcript ``i``: ``SCRIPT_BASE_HZ + i * SCRIPT_STEP_HZ``."""
WINDOW_SAMPLES = 512
"""Energy VAD window at 16 kHz (32 ms, like Silero's)."""


def utterance_tone(index: int, seconds: float, rate: int = STT_SAMPLE_RATE, amplitude: float = 0.3) -> Audio:
    """What a test "says" to get scripted transcript ``index`` from :class:`FakeSTT`."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    tone = amplitude * np.sin(2 * np.pi * (SCRIPT_BASE_HZ + index * SCRIPT_STEP_HZ) * t)
    return tone.astype(np.float32)


class FakeSTT:
    """:class:`~voicechat_session.backends.base.SpeechToText`: the scripted transcript the utterance's pitch
    selects (:func:`utterance_tone`); quiet audio is no words."""

    def __init__(self, transcripts: Sequence[str], latency_s: float = 0.0) -> None:
        if not transcripts:
            raise ValueError("the fake STT needs at least one scripted transcript")
        self.transcripts = list(transcripts)
        self.latency_s = latency_s

    def script_index(self, audio: Audio) -> int | None:
        """The index the audio's dominant pitch selects (clamped to the script), None for quiet audio."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0 or float(np.sqrt(np.mean(samples**2))) < QUIET_RMS:
            return None
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
        peak_hz = float(np.fft.rfftfreq(samples.size, 1 / STT_SAMPLE_RATE)[int(np.argmax(spectrum))])
        index = round((peak_hz - SCRIPT_BASE_HZ) / SCRIPT_STEP_HZ)
        return min(max(index, 0), len(self.transcripts) - 1)

    def transcribe(self, audio: Audio) -> str:
        if self.latency_s:
            time.sleep(self.latency_s)
        index = self.script_index(audio)
        if index is None:
            return ""
        text = self.transcripts[index]
        if text == STT_ERROR:
            raise RuntimeError("fake STT: scripted failure")
        return text.strip()


class FakeTTS:
    """:class:`~voicechat_session.backends.base.TextToSpeech`: a 440 Hz tone, ``ms_per_char`` per character."""

    def __init__(self, ms_per_char: float = 60.0, latency_s: float = 0.0) -> None:
        self.ms_per_char = ms_per_char
        self.latency_s = latency_s

    @property
    def voices(self) -> list[str]:
        return list(FAKE_VOICES)

    def duration_s(self, text: str, speed: float = 1.0) -> float:
        return len(text) * self.ms_per_char / 1000.0 / speed

    def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        if voice not in FAKE_VOICES:
            raise ValueError(f"unknown voice {voice!r}")
        if self.latency_s:
            time.sleep(self.latency_s)
        if TTS_ERROR in text:
            raise RuntimeError("fake TTS: scripted failure")
        samples = round(self.duration_s(text, speed) * TTS_SAMPLE_RATE)
        t = np.arange(samples, dtype=np.float32) / TTS_SAMPLE_RATE
        tone: Audio = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
        return tone


class EnergyVad:
    """:class:`~voicechat_session.backends.base.VadModel`: speech is a window louder than ``threshold`` RMS."""

    window_samples = WINDOW_SAMPLES
    sample_rate = STT_SAMPLE_RATE

    def __init__(self, threshold: float = 0.02) -> None:
        self.threshold = threshold

    def stream(self) -> EnergyVadStream:
        return EnergyVadStream(self.threshold)


class EnergyVadStream:
    """Per connection: one probability per full 512-sample window (1.0 loud, 0.0 quiet)."""

    window_samples = WINDOW_SAMPLES

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._pending = np.zeros(0, dtype=np.float32)

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, audio: Audio) -> list[float]:
        buffered = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32).reshape(-1)])
        count = buffered.size // WINDOW_SAMPLES
        windows = buffered[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES)
        self._pending = buffered[count * WINDOW_SAMPLES :].copy()
        rms = np.sqrt(np.mean(windows**2, axis=1)) if count else np.zeros(0, dtype=np.float32)
        return [1.0 if level >= self.threshold else 0.0 for level in rms.tolist()]
