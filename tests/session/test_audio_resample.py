"""PCM16 conversion and the numpy polyphase resampler."""

from __future__ import annotations

import numpy as np
import pytest

from voicechat_session.audio import float_to_pcm16, pcm16_to_float, resample


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(
    ("src", "dst"), [(24_000, 16_000), (16_000, 24_000), (48_000, 16_000), (44_100, 16_000), (8_000, 16_000)]
)
def test_resample_keeps_pitch_level_and_length(src: int, dst: int) -> None:
    out = resample(tone(440.0, src), src, dst)
    assert out.dtype == np.float32
    assert out.size == dst  # one second in, one second out
    assert dominant_frequency(out, dst) == pytest.approx(440.0, abs=2.0)
    # Passband gain ~1: the RMS of a 0.5 sine is 0.354 (edges excluded: the filter's ramp-in).
    core = out[dst // 10 : -dst // 10]
    assert float(np.sqrt(np.mean(core**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_resample_rejects_frequencies_above_the_new_nyquist() -> None:
    # 11 kHz is above 8 kHz (Nyquist at 16 kHz): it must be filtered, not folded back to 5 kHz.
    for freq in (9_000.0, 11_000.0, 20_000.0):
        core = resample(tone(freq, 48_000), 48_000, 16_000)[1600:-1600]  # edges: the tone's abrupt start
        assert float(np.sqrt(np.mean(core**2))) < 0.5 / np.sqrt(2) * 10 ** (-60 / 20), freq


def test_resample_edge_cases() -> None:
    audio = tone(300.0, 16_000, 0.1)
    np.testing.assert_array_equal(resample(audio, 16_000, 16_000), audio)
    assert resample(np.zeros(0, np.float32), 24_000, 16_000).size == 0
    with pytest.raises(ValueError, match="positive"):
        resample(audio, 0, 16_000)


def test_pcm16_round_trip_and_clipping() -> None:
    audio = np.array([0.0, 0.5, -0.5, 0.999, -1.0, 1.5, -1.5], dtype=np.float32)
    data = float_to_pcm16(audio)
    assert len(data) == 2 * audio.size
    back = pcm16_to_float(data)
    np.testing.assert_allclose(back[:5], audio[:5], atol=1 / 32768)
    assert back[5] == pytest.approx(32767 / 32768)
    assert back[6] == -1.0
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")
