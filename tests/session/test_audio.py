from __future__ import annotations

import numpy as np
import pytest

from voicechat_session.audio import RealTimeBudget, StreamingResampler, pcm16_chunks


@pytest.mark.parametrize(
    ("src", "dst"), [(48_000, 16_000), (44_100, 16_000), (8_000, 16_000), (16_000, 16_000)]
)
def test_streaming_resampler_matches_length_and_tone(src: int, dst: int) -> None:
    t = np.arange(src) / src
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # one second of 440 Hz
    resampler = StreamingResampler(src, dst)
    chunks = [resampler.process(tone[i : i + 333]) for i in range(0, tone.size, 333)]
    out = np.concatenate(chunks)
    assert abs(out.size - dst) <= 3
    spectrum = np.abs(np.fft.rfft(out[dst // 10 : dst // 10 + dst // 2]))
    peak_hz = np.argmax(spectrum) * dst / (dst // 2)
    assert abs(peak_hz - 440) < 10
    # Continuous across chunk edges: no clicks.
    assert np.max(np.abs(np.diff(out[100:-100]))) < 0.5 * 2 * np.pi * 440 / dst * 1.5


def test_downsampling_removes_content_above_the_new_nyquist() -> None:
    src, dst = 48_000, 16_000
    t = np.arange(src) / src
    high = (0.5 * np.sin(2 * np.pi * 12_000 * t)).astype(np.float32)  # would alias to 4 kHz
    out = StreamingResampler(src, dst).process(high)
    assert np.sqrt(np.mean(out[200:-200] ** 2)) < 0.05


def test_real_time_budget() -> None:
    now = [0.0]
    budget = RealTimeBudget(factor=2.0, burst_s=1.0, clock=lambda: now[0])
    assert budget.take(2.0)  # the burst allowance
    assert not budget.take(0.1)
    now[0] += 1.0  # one second later: two seconds of audio allowed
    assert budget.take(1.5)
    assert not budget.take(1.0)


def test_pcm16_chunks() -> None:
    audio = np.zeros(24_000, dtype=np.float32)
    chunks = list(pcm16_chunks(audio, 24_000, 80))
    assert [len(c) for c in chunks[:2]] == [3840, 3840]
    assert sum(len(c) for c in chunks) == 48_000
