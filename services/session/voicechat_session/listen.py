"""The audio input stage of a connection: PCM16 bytes → rate budget → resampling → VAD → endpointing → events.

It knows no socket and no turn: it reports what it heard through ``emit`` and the connection decides what
that means (a barge-in, a new turn, an error event). Partial transcripts run here too, on idle model capacity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from voicechat_session.audio import STT_SAMPLE_RATE, Audio, RealTimeBudget, StreamingResampler, pcm16_to_float
from voicechat_session.backends.loader import ModelSet
from voicechat_session.endpointing import (
    Phase,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
)
from voicechat_session.pool import Priority
from voicechat_session.protocol import ErrorCode
from voicechat_session.serving import Pod

log = logging.getLogger(__name__)

PARTIAL_INTERVAL_MS = 1000.0
"""Speech between two partial transcripts."""
MAX_REFUSED_AUDIO_S = 30.0
"""Audio refused for being too fast beyond this → the client is misbehaving: close."""


@dataclass(frozen=True)
class SpeechBegan:
    """The user started speaking (after ``vad_min_speech_ms``)."""


@dataclass(frozen=True)
class StillSpeaking:
    """The user is speaking; ``speech_ms`` so far (emitted after every chunk of speech)."""

    speech_ms: float


@dataclass(frozen=True)
class Utterance:
    """The user stopped speaking: the utterance at 16 kHz."""

    audio: Audio
    speech_ms: float
    user_end: float
    """perf_counter of the last speech heard."""
    decided: float
    """perf_counter when the end was decided."""
    after_pause: bool = False
    """The audio is exactly that of the preceding :class:`Paused` (work started there is valid)."""


@dataclass(frozen=True)
class Paused:
    """A short silence after speech (``speculate_silence_ms``): the utterance as it ends if nobody speaks."""

    audio: Audio
    speech_ms: float
    user_end: float
    at: float
    """perf_counter of the pause."""


@dataclass(frozen=True)
class Resumed:
    """Speech again after :class:`Paused`: that audio is not the whole utterance."""


@dataclass(frozen=True)
class Partial:
    """A partial transcript of the utterance in progress."""

    text: str


@dataclass(frozen=True)
class Refused:
    """Input that was dropped; ``fatal``: the client misbehaves beyond tolerance and must be closed."""

    code: ErrorCode
    message: str
    fatal: bool = False


InputEvent = SpeechBegan | StillSpeaking | Paused | Resumed | Utterance | Partial | Refused


class AudioInput:
    """One connection's microphone stream (created by ``start``, at the client's sample rate)."""

    def __init__(
        self,
        pod: Pod,
        models: ModelSet,
        sample_rate: int,
        emit: Callable[[InputEvent], None],
        session_id: str = "",
    ) -> None:
        s = pod.settings
        self.pod = pod
        self.models = models
        self.sample_rate = sample_rate
        self.emit = emit
        self.session_id = session_id
        self.max_rate_factor = s.max_audio_rate_factor
        self.partials = s.partial_transcripts
        self._resampler = StreamingResampler(sample_rate, STT_SAMPLE_RATE)
        self._budget = RealTimeBudget(s.max_audio_rate_factor)
        self._vad = models.vad.stream()
        self._detector = TurnDetector(
            TurnConfig(
                threshold=s.vad_threshold,
                min_speech_ms=s.vad_min_speech_ms,
                min_silence_ms=s.vad_min_silence_ms,
                max_utterance_s=s.max_utterance_s,
                pause_ms=s.speculate_silence_ms,
            ),
            window_samples=self._vad.window_samples,
        )
        self._refused_s = 0.0
        self._last_speech_at: float | None = None
        self._utterance_seq = 0
        self._partial_task: asyncio.Task[None] | None = None
        self._partial_at_ms = 0.0

    @property
    def speaking(self) -> bool:
        """The person is in the middle of an utterance (speech heard, its end not yet decided)."""
        return self._detector.phase is Phase.SPEECH

    async def feed(self, data: bytes) -> None:
        """One binary frame from the client."""
        if len(data) % 2:
            self.emit(
                Refused("odd_length_audio", f"PCM16 frames need an even number of bytes, got {len(data)}")
            )
            return
        audio = pcm16_to_float(data)
        seconds = audio.size / self.sample_rate
        if not self._budget.take(seconds):
            self._refused_s += seconds
            if self._refused_s > MAX_REFUSED_AUDIO_S:
                self.emit(
                    Refused("audio_too_fast", "audio keeps arriving far faster than real time; closing", True)
                )
            else:
                self.emit(
                    Refused(
                        "audio_too_fast", f"audio faster than {self.max_rate_factor:g}x real time is dropped"
                    )
                )
            return
        await self._process(self._resampler.process(audio))

    async def _process(self, audio16: Audio) -> None:
        probs = await self.pod.run_vad(self._vad.process, audio16)
        detector = self._detector
        events = detector.feed(audio16, probs)
        now = time.perf_counter()
        if detector.last_feed_had_speech:
            self._last_speech_at = now
        for event in events:
            if isinstance(event, SpeechStarted):
                self._partial_at_ms = 0.0
                self.emit(SpeechBegan())
            elif isinstance(event, SpeechEnded):
                self._utterance_seq += 1
                self.cancel()
                user_end = self._last_speech_at if self._last_speech_at is not None else now
                self.emit(
                    Utterance(
                        event.audio,
                        event.speech_ms,
                        user_end=user_end,
                        decided=now,
                        after_pause=event.after_pause,
                    )
                )
            elif isinstance(event, SpeechPaused):
                # The final transcription may start now: a partial would only compete with it.
                self.cancel()
                user_end = self._last_speech_at if self._last_speech_at is not None else now
                self.emit(Paused(event.audio, event.speech_ms, user_end=user_end, at=now))
            elif isinstance(event, SpeechResumed):
                self.emit(Resumed())
        if detector.phase is Phase.SPEECH:
            self.emit(StillSpeaking(detector.speech_ms))
            self._maybe_partial()

    def _maybe_partial(self) -> None:
        detector = self._detector
        if (
            not self.partials
            or not detector.last_feed_had_speech  # silence began: the final transcription comes next
            or self._partial_task is not None
            or detector.speech_ms - self._partial_at_ms < PARTIAL_INTERVAL_MS
            or not self.pod.pool_idle
        ):
            return
        self._partial_at_ms = detector.speech_ms
        self._partial_task = asyncio.create_task(
            self._partial(detector.utterance_so_far(), self._utterance_seq)
        )

    async def _partial(self, audio: Audio, utterance: int) -> None:
        try:
            text = await self.pod.transcribe(self.models.stt, audio, Priority.BACKGROUND)
        except Exception:
            log.warning("partial transcription failed", extra={"session_id": self.session_id}, exc_info=True)
            return
        finally:
            self._partial_task = None
        if text and utterance == self._utterance_seq:
            self.emit(Partial(text))

    def cancel(self) -> None:
        """Stop a partial transcription in progress (its result would be stale)."""
        if self._partial_task is not None:
            self._partial_task.cancel()
            self._partial_task = None  # a task cancelled before it ran never reaches its `finally`

    @property
    def pending_task(self) -> asyncio.Task[None] | None:
        return self._partial_task
