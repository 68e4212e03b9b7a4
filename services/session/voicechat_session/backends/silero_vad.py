"""Silero VAD v6 (the ONNX model shipped in faster-whisper): one session per pod, state per connection.

The model (as exported for faster-whisper) takes a batch of windows ``[n, 64 + 512]`` at 16 kHz, each
prefixed with the last 64 samples of the window before it, plus LSTM state ``h``/``c`` of shape
``[1, 1, 128]``; it treats the batch as consecutive time steps and returns one speech probability per window
and the state after the last one. ``faster_whisper.vad.SileroVADModel`` feeds a whole recording at once; a
:class:`SileroVadStream` feeds it piece by piece, carrying the state and context itself, so both give the
same probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.embedded import silero_vad_path

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 512
"""Samples per probability at 16 kHz (32 ms)."""
CONTEXT_SAMPLES = 64
SAMPLE_RATE = STT_SAMPLE_RATE
_STATE_SHAPE = (1, 1, 128)


class SileroVad:
    """:class:`~voicechat_session.backends.base.VadModel`: weights shared, thread-safe (``run`` is)."""

    window_samples = WINDOW_SAMPLES
    sample_rate = SAMPLE_RATE

    def __init__(self, path: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise RuntimeError("the VAD needs onnxruntime: pip install 'voicechat[session]'") from exc
        self.path = path or silero_vad_path()
        opts = ort.SessionOptions()
        # A window is tiny: one thread per call is fastest and leaves the cores to STT and TTS.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session: Any = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        log.info("vad model loaded", extra={"model": str(self.path)})

    def stream(self) -> SileroVadStream:
        return SileroVadStream(self)

    def run(
        self,
        windows: npt.NDArray[np.float32],
        h: npt.NDArray[np.float32],
        c: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``windows`` ``[n, 576]`` (context + window) → probabilities ``[n]`` and the new ``h``, ``c``."""
        probs, h_out, c_out = self._session.run(None, {"input": windows, "h": h, "c": c})
        return (
            np.asarray(probs, dtype=np.float32).reshape(-1),
            np.asarray(h_out, dtype=np.float32),
            np.asarray(c_out, dtype=np.float32),
        )


class SileroVadStream:
    """Per-connection VAD: feed 16 kHz audio in chunks of any size, get one probability per full window.

    Not thread-safe (one connection feeds it, in order); many streams share one :class:`SileroVad`.
    """

    window_samples = WINDOW_SAMPLES

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        """Forget all audio: the next sample starts a fresh stream."""
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples_seen = 0

    @property
    def pending_samples(self) -> int:
        """Samples buffered towards the next window."""
        return int(self._pending.size)

    def process(self, audio: Audio) -> list[float]:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.samples_seen += int(samples.size)
        buffered = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = buffered.size // WINDOW_SAMPLES
        if count == 0:
            self._pending = buffered.copy()
            return []
        windows = buffered[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES)
        self._pending = buffered[count * WINDOW_SAMPLES :].copy()
        # Each window's context is the tail of the window before it (the stream's previous tail for the first).
        contexts = np.empty((count, CONTEXT_SAMPLES), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = windows[:-1, -CONTEXT_SAMPLES:]
        batch = np.ascontiguousarray(np.concatenate([contexts, windows], axis=1))
        probs, self._h, self._c = self._model.run(batch, self._h, self._c)
        self._context = windows[-1, -CONTEXT_SAMPLES:].copy()
        return [float(p) for p in probs]
