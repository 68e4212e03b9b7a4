"""Audio helpers shared by the backends, their warm-up and the tests: PCM16 conversion and resampling.

The resampler is a windowed-sinc polyphase FIR (Kaiser window) in plain numpy: scipy is not a dependency.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from voicechat_session.backends.base import Audio

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
