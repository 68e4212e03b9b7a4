"""Smart Turn v3.2 from the pipecat-ai wheel: features, and complete sentences against sentences cut short."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import numpy as np
import pytest

from voicechat_loadtest.speech import load_speech
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.smart_turn import (
    WINDOW_S,
    SmartTurn,
    bundled_model_path,
    last_window,
    log_mel_features,
)

PAUSE = np.zeros(STT_SAMPLE_RATE // 5, np.float32)  # 200 ms of silence after the speech, as at a VAD pause


def _speech_only(audio: Audio, threshold: float = 0.01) -> Audio:
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    return audio[loud[0] : loud[-1] + 1]


@pytest.fixture(scope="module")
def shipped() -> list[Audio]:
    return [
        _speech_only(np.frombuffer(s.pcm, dtype="<i2").astype(np.float32) / 32768.0) for s in load_speech()
    ]


def test_window_keeps_the_end_and_pads_the_start() -> None:
    short = np.ones(STT_SAMPLE_RATE, np.float32)
    window = last_window(short)
    assert window.size == WINDOW_S * STT_SAMPLE_RATE
    assert window[-1] == 1.0
    assert window[0] == 0.0
    long = np.arange(10 * STT_SAMPLE_RATE, dtype=np.float32)
    assert last_window(long)[-1] == long[-1]
    assert last_window(long)[0] == long[-WINDOW_S * STT_SAMPLE_RATE]


def test_features_are_whisper_log_mel(shipped: list[Audio]) -> None:
    features = log_mel_features(last_window(shipped[0]))
    assert features.shape == (80, 800)
    assert features.dtype == np.float32
    # Whisper's scaling: at most 8 (log10) below the peak, then (x + 4) / 4.
    assert features.max() - features.min() <= 2.0 + 1e-6
    assert np.isfinite(features).all()


def test_features_equal_pipecats_own(shipped: list[Audio]) -> None:
    # pipecat's numpy feature module needs only numpy: load that one file from the installed wheel by path.
    reference_path = bundled_model_path().parents[1] / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", reference_path)
    assert spec is not None
    assert spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    for audio in shipped:
        window = last_window(audio)
        np.testing.assert_allclose(
            log_mel_features(window), reference.compute_whisper_log_mel_features(window), atol=1e-6
        )


@pytest.mark.models
def test_complete_sentences_score_higher_than_sentences_cut_mid_way(shipped: list[Audio]) -> None:
    model = SmartTurn(bundled_model_path())
    complete = [model.probability(np.concatenate([s, PAUSE])) for s in shipped]
    cut = [model.probability(np.concatenate([s[: int(s.size * 0.55)], PAUSE])) for s in shipped]
    assert all(0.0 <= p <= 1.0 for p in complete + cut)
    # Synthetic speech has flat prosody, so single utterances can be wrong; over the shipped set the model
    # tells finished questions from questions broken off in the middle.
    assert statistics.median(complete) > 0.5 > statistics.median(cut), (complete, cut)
    assert statistics.median(complete) - statistics.median(cut) > 0.3


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Smart Turn model not found"):
        SmartTurn(model_path=tmp_path / "missing.onnx")
