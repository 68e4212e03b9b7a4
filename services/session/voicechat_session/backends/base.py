"""Stage interfaces of the voice pipeline.

Model objects (``SpeechToText``, ``TextToSpeech``, ``VadModel``) hold weights and are shared read-only by
every connection of a pod (``sharing=pod``) or created per connection (``sharing=connection``). Their
methods are blocking and thread-safe; callers run them in the pod's bounded worker pool, never on the event
loop. Per-connection state lives in the small objects they hand out (``VadStream``) or in the caller.
"""

from __future__ import annotations

from typing import Protocol

from voicechat_session.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, Audio

__all__ = [
    "STT_SAMPLE_RATE",
    "TTS_SAMPLE_RATE",
    "Audio",
    "SpeechToText",
    "TextToSpeech",
    "VadModel",
    "VadStream",
]


class SpeechToText(Protocol):
    """Transcribes one whole utterance (Whisper pads to 30 s: transcribe once per turn, not repeatedly)."""

    def transcribe(self, audio: Audio) -> str:
        """``audio`` at 16 kHz. Returns the text, stripped; empty when nothing was said."""
        ...


class TextToSpeech(Protocol):
    @property
    def voices(self) -> list[str]:
        """Voice names accepted by :meth:`synthesize`."""
        ...

    def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        """One clause → 24 kHz audio. Raises ``ValueError`` for an unknown voice."""
        ...


class VadStream(Protocol):
    """Per-connection VAD state: feed 16 kHz audio in any chunk sizes, get one speech probability per window."""

    window_samples: int

    def process(self, audio: Audio) -> list[float]: ...

    def reset(self) -> None: ...


class VadModel(Protocol):
    def stream(self) -> VadStream: ...
