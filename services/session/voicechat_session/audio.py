"""Audio in one place: PCM16 conversion, resampling (whole-buffer and streaming), output framing and a
real-time rate limit. Pure numpy; backends, the input stage, the reply pipeline and the tests share it.

The whole-buffer resampler is a windowed-sinc polyphase FIR (Kaiser window) in plain numpy: scipy is not a
dependency. The streaming one (microphone input) carries its state across chunks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from voicechat_session.protocol import OUTPUT_SAMPLE_RATE

Audio = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1]."""

STT_SAMPLE_RATE = 16_000
"""What VAD and STT take."""
TTS_SAMPLE_RATE = OUTPUT_SAMPLE_RATE
"""What TTS backends produce: the protocol's output rate (Kokoro's native 24 kHz), stated once in protocol."""

_ZERO_CROSSINGS = 16
"""Sinc lobes per side: ~-80 dB stopband with the Kaiser window below, at modest cost."""
_KAISER_BETA = 8.6
_ROLLOFF = 0.94
"""Cutoff as a fraction of the lower Nyquist frequency, leaving room for the transition band."""
_BLOCK = 8192


def pcm16_to_float(data: bytes) -> Audio:
    """Little-endian PCM16 bytes → float32 in [-1, 1). Odd-length input is a caller error."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def float_to_pcm16(audio: Audio) -> bytes:
    """float32 samples → little-endian PCM16 bytes, clipped to the representable range."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32) * 32768.0, -32768.0, 32767.0)
    return bytes(np.round(scaled).astype("<i2").tobytes())


@lru_cache(maxsize=32)
def _polyphase_filter(up: int, down: int) -> tuple[npt.NDArray[np.float32], int]:
    """Filter bank ``[up, taps]`` for rate change ``up/down`` and the filter's half length (at ``up`` times the rate)."""
    factor = max(up, down)
    half = _ZERO_CROSSINGS * factor
    k = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = _ROLLOFF * 0.5 / factor  # cycles per sample at the upsampled rate
    taps = 2 * cutoff * np.sinc(2 * cutoff * k) * np.kaiser(k.size, _KAISER_BETA) * up
    per_phase = math.ceil(taps.size / up)
    padded = np.zeros(per_phase * up, dtype=np.float64)
    padded[: taps.size] = taps
    # bank[p, j] = taps[p + j * up]
    bank = padded.reshape(per_phase, up).T.astype(np.float32)
    return np.ascontiguousarray(bank), half


def resample(audio: Audio, src_rate: int, dst_rate: int) -> Audio:
    """Band-limited resampling of mono float32 audio; output length ``ceil(len * dst / src)``."""
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} → {dst_rate}")
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if src_rate == dst_rate or x.size == 0:
        return x.copy()
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    bank, half = _polyphase_filter(up, down)
    per_phase = bank.shape[1]
    n_out = math.ceil(x.size * up / down)
    left = per_phase
    right = per_phase + half // up + 2
    xp = np.concatenate([np.zeros(left, np.float32), x, np.zeros(right, np.float32)])
    j = np.arange(per_phase)
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, _BLOCK):
        n = np.arange(start, min(start + _BLOCK, n_out), dtype=np.int64)
        pos = n * down + half  # position in the zero-stuffed signal, shifted by the filter delay
        phase = pos % up
        base = pos // up
        frames = xp[(base + left)[:, None] - j[None, :]]
        out[start : start + n.size] = np.einsum("ij,ij->i", frames, bank[phase])
    return out


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
