"""Stage interfaces of the voice pipeline.

Model objects (``SpeechToText``, ``TextToSpeech``, ``VadModel``) hold weights and are shared read-only by
every connection of a pod (``sharing=pod``) or created per connection (``sharing=connection``). Their
methods are blocking and thread-safe; callers run them in the pod's bounded worker pool, never on the event
loop. Per-connection state lives in the small objects they hand out (``VadStream``) or in the caller.

Remote backends (a speech server over HTTP) are the exception: their calls wait on the network, not on a CPU,
so they are async and never take a slot of the pool (``AsyncSpeechToText``, ``StreamingTextToSpeech``). They
hold an HTTP client, released with ``close()`` (every backend may be passed to :func:`close_backend`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

from voicechat_session.audio import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, Audio

__all__ = [
    "STT_SAMPLE_RATE",
    "TTS_SAMPLE_RATE",
    "AsyncSpeechToText",
    "Audio",
    "Closable",
    "SpeechServerError",
    "SpeechToText",
    "StreamingTextToSpeech",
    "TextToSpeech",
    "VadModel",
    "VadStream",
    "close_backend",
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


class SpeechServerError(RuntimeError):
    """A speech server (remote backend) could not do what was asked: unreachable, too slow, refused, broken.

    Its text names the stage and the cause without URLs or response bodies (those go to the log), so it may
    be shown to a client in an ``error`` message and in ``/readyz``. At start the pod stays not ready with
    this text as the reason and tries again, instead of exiting.
    """


@runtime_checkable
class Closable(Protocol):
    async def close(self) -> None:
        """Release what the backend holds open (an HTTP client's connections)."""
        ...


@runtime_checkable
class AsyncSpeechToText(Protocol):
    """Transcribes on another machine: awaited on the event loop, never in the pod's CPU pool."""

    async def transcribe_async(self, audio: Audio) -> str:
        """``audio`` at 16 kHz. Returns the text, stripped; empty when nothing was said."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class StreamingTextToSpeech(Protocol):
    """Synthesizes on another machine and hands audio over as it arrives (first sound before the last)."""

    @property
    def voices(self) -> list[str]:
        """Voice names accepted by :meth:`stream_speech` (as of the last :meth:`refresh_voices`)."""
        ...

    async def refresh_voices(self) -> list[str]:
        """Ask the server which voices it has (one request); :attr:`voices` returns them afterwards."""
        ...

    def stream_speech(self, text: str, voice: str, speed: float) -> AsyncGenerator[Audio, None]:
        """One clause → 24 kHz audio pieces of any length, as they arrive. Close the iterator (``aclosing``)
        to stop early: that closes the HTTP response, so the server stops synthesizing."""
        ...

    async def close(self) -> None: ...


async def close_backend(backend: object) -> None:
    """Close a backend that holds resources; a no-op for in-process models (their weights are just freed)."""
    if isinstance(backend, Closable):
        await backend.close()
