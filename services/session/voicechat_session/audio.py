"""Connection audio plumbing: output framing, a streaming input resampler and a real-time rate limit (pure).

PCM16 conversion lives in :mod:`voicechat_session.backends.audio` (one definition for backends and service).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from voicechat_session.backends.audio import float_to_pcm16
from voicechat_session.backends.base import Audio


def pcm16_chunks(audio: Audio, sample_rate: int, chunk_ms: int) -> Iterator[bytes]:
    """PCM16 frames of ``chunk_ms`` each (the last may be shorter)."""
    step = max(1, sample_rate * chunk_ms // 1000)
    for start in range(0, len(audio), step):
        yield float_to_pcm16(audio[start : start + step])


def _lowpass_taps(cutoff: float, num_taps: int = 63) -> npt.NDArray[np.float32]:
    """Windowed-sinc low-pass FIR; ``cutoff`` as a fraction of the input Nyquist frequency."""
    n = np.arange(num_taps) - (num_taps - 1) / 2
    taps: npt.NDArray[np.float64] = cutoff * np.sinc(cutoff * n) * np.hamming(num_taps)
    normalized: npt.NDArray[np.float32] = (taps / taps.sum()).astype(np.float32)
    return normalized


class StreamingResampler:
    """Resamples a stream chunk by chunk without clicks at chunk edges (state carried across calls).

    Downsampling low-pass filters first (no aliasing into the speech band), then interpolates linearly;
    that is plenty for VAD and Whisper, which only look at the 0-8 kHz band.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._step = in_rate / out_rate
        self._taps = _lowpass_taps(min(1.0, out_rate / in_rate) * 0.9) if in_rate > out_rate else None
        self._fir_tail = np.zeros(0 if self._taps is None else len(self._taps) - 1, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # filtered input not yet consumed
        self._pos = 0.0  # next output position, in input samples relative to _pending[0]

    def process(self, audio: Audio) -> Audio:
        if self.in_rate == self.out_rate:
            same: Audio = np.asarray(audio, dtype=np.float32)
            return same
        x = np.asarray(audio, dtype=np.float32)
        if self._taps is not None:
            padded = np.concatenate([self._fir_tail, x])
            self._fir_tail = (
                padded[len(padded) - len(self._fir_tail) :] if len(self._fir_tail) else self._fir_tail
            )
            x = np.convolve(padded, self._taps, mode="valid").astype(np.float32)
        buf = np.concatenate([self._pending, x])
        if len(buf) < 2:
            self._pending = buf
            return np.zeros(0, dtype=np.float32)
        # Output positions that have both neighbours available.
        last = len(buf) - 1
        count = max(0, math.floor((last - self._pos) / self._step) + 1) if self._pos <= last else 0
        positions = self._pos + self._step * np.arange(count)
        positions = positions[positions < last]
        out: Audio = np.interp(positions, np.arange(len(buf)), buf).astype(np.float32)
        next_pos = self._pos + self._step * len(positions)
        # Keep the sample the next output position starts from (it may lie in this chunk's last sample).
        drop = min(int(next_pos), len(buf) - 1)
        self._pending = buf[drop:]
        self._pos = next_pos - drop
        return out


class RealTimeBudget:
    """Token bucket over audio seconds: a client may send at most ``factor`` x real time, plus a burst.

    A client that sends faster (a replayed file, a flood) is refused instead of growing buffers.
    """

    def __init__(
        self, factor: float, burst_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.factor = factor
        self.capacity = burst_s * factor
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self, audio_s: float) -> bool:
        """Spend ``audio_s`` seconds of audio; False (nothing spent) when that exceeds the budget."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.factor)
        self._last = now
        if audio_s > self._tokens:
            return False
        self._tokens -= audio_s
        return True
