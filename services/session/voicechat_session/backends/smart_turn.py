"""Turn completion: Smart Turn v3.2 (ONNX) says how likely an utterance's audio ends a complete turn.

Silence alone cannot tell "What is the capital of" (a pause to think) from "What is the capital of France?"
(done). Smart Turn is a small audio classifier (Whisper-tiny encoder, 8 M parameters) trained on exactly
that; it hears intonation and grammar. The model file ships inside the ``pipecat-ai`` wheel (BSD-2-Clause),
installed with ``--no-deps`` and never imported: only the file is read, no hub.

The features are Whisper's log-mel spectrogram over the last 8 s (zero-padded at the start), computed with
numpy exactly as pipecat does (``pipecat/audio/turn/smart_turn/_whisper_features.py``, itself mirroring
``transformers.WhisperFeatureExtractor``).
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio

log = logging.getLogger(__name__)

MODEL_PACKAGE = "pipecat"
MODEL_RELATIVE_PATH = Path("audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")
WINDOW_S = 8
_N_FFT = 400
_HOP = 160
_N_MELS = 80
_MEL_FLOOR = 1e-10
_VARIANCE_EPS = 1e-7

Float64 = npt.NDArray[np.float64]


def bundled_model_path() -> Path:
    """The ONNX file inside the installed ``pipecat-ai`` wheel, located without importing pipecat."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Smart Turn needs the pipecat-ai wheel's model file: pip install --no-deps pipecat-ai "
            "(requirements/embedded-models.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"Smart Turn model not found at {path} (a pipecat-ai version without it?)")
    return path


def _hz_to_mel(freq: Float64) -> Float64:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: Float64) -> Float64:
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


@cache
def _mel_filters() -> Float64:
    """Slaney-normalized triangular filters, shape (n_fft/2+1, n_mels)."""
    low, high = _hz_to_mel(np.array([0.0, STT_SAMPLE_RATE / 2.0]))
    edges = _mel_to_hz(np.linspace(float(low), float(high), _N_MELS + 2))
    fft_freqs = np.linspace(0, STT_SAMPLE_RATE // 2, _N_FFT // 2 + 1)
    slopes = edges[None, :] - fft_freqs[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters: Float64 = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return filters


def log_mel_features(audio: Audio) -> npt.NDArray[np.float32]:
    """Whisper log-mel features of exactly 8 s of 16 kHz audio (normalized waveform): shape (80, 800)."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = WINDOW_S * STT_SAMPLE_RATE
    x = np.pad(x, (0, n - x.size)) if x.size < n else x[:n]
    x = (x - x.mean()) / np.sqrt(x.var() + _VARIANCE_EPS)
    padded = np.pad(x.astype(np.float64), (_N_FFT // 2, _N_FFT // 2), mode="reflect")
    window = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window
    frames = sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = np.log10(np.maximum(_MEL_FLOOR, _mel_filters().T @ power.T))[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    features: npt.NDArray[np.float32] = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


def last_window(audio: Audio) -> Audio:
    """The last 8 s of the utterance, zero-padded at the start when shorter."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = WINDOW_S * STT_SAMPLE_RATE
    return x[-n:] if x.size >= n else np.pad(x, (n - x.size, 0))


class SmartTurn:
    """P(the turn is complete) for an utterance's audio at 16 kHz; thread-safe (one ONNX session)."""

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        path = model_path or bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"Smart Turn model not found at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session: Any = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.model_path = path
        log.info("smart turn model loaded", extra={"model": str(path), "threads": threads})

    def probability(self, audio: Audio) -> float:
        """Probability (0..1) that the speech in ``audio`` (16 kHz, ending now) is a finished turn."""
        features = log_mel_features(last_window(audio))[None]
        outputs = self._session.run(None, {"input_features": features})
        return float(np.asarray(outputs[0]).reshape(-1)[0])
