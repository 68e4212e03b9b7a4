"""Text to speech with Kokoro-82M through kokoro-onnx: one ONNX session per pod, shared by every connection.

Thread safety (read from kokoro-onnx 0.6.1): ``InferenceSession.run`` is thread-safe; phonemisation through
espeak-ng holds a module-level lock inside kokoro-onnx (espeak has process-global state), so only G2P is
serialised and inference runs concurrently. kokoro-onnx keeps the voices as a lazily read ``NpzFile`` (a shared
zip handle); we load every voice into memory once and pass style arrays, so concurrent calls never touch it.
kokoro-onnx splits text longer than the model's 510-phoneme context itself; the service still sends one
clause at a time so the first audio is ready early.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voicechat_session.backends.base import TTS_SAMPLE_RATE, Audio
from voicechat_session.backends.embedded import kokoro_model_path, kokoro_voices_path
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)
# kokoro-onnx's phonemizer warns "words count mismatch" on almost every clause; it is harmless (the
# phonemes are used whole, not word by word) and would otherwise drown the service's own logs.
logging.getLogger("phonemizer").setLevel(logging.ERROR)

MIN_SPEED = 0.5
MAX_SPEED = 2.0
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class KokoroOnnxOptions:
    model_path: Path
    voices_path: Path
    lang: str = "en-us"
    device: str = "cpu"
    threads: int = 0
    """ONNX Runtime intra-op threads per call (0 = its default: all cores)."""

    @classmethod
    def from_settings(cls, settings: SessionSettings, threads: int = 0) -> KokoroOnnxOptions:
        model = settings.tts_model_path or kokoro_model_path(settings.model_cache_dir)
        voices = settings.tts_voices_path or kokoro_voices_path()
        for what, path in (("model", model), ("voices", voices)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"Kokoro {what} file {path} does not exist")
        return cls(
            model_path=Path(model),
            voices_path=Path(voices),
            lang=settings.tts_lang,
            device=settings.tts_device,
            threads=threads,
        )


def execution_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for ``device``; CUDA must really be there rather than silently fall back."""
    if device == "cuda":
        if _CUDA not in available:
            raise RuntimeError(
                f"tts_device=cuda but this onnxruntime has no {_CUDA} (available: {available}); "
                "install onnxruntime-gpu in place of onnxruntime"
            )
        return [_CUDA, _CPU]
    return [_CPU]


def unknown_voice_error(voice: str, voices: list[str]) -> ValueError:
    return ValueError(f"unknown voice {voice!r}; available voices: {', '.join(voices)}")


def check_speed(speed: float) -> None:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")


class KokoroOnnxTTS:
    """:class:`~voicechat_session.backends.base.TextToSpeech` over ``kokoro_onnx.Kokoro``; thread-safe."""

    sample_rate = TTS_SAMPLE_RATE

    def __init__(self, options: KokoroOnnxOptions) -> None:
        try:
            import onnxruntime as ort
            from kokoro_onnx import Kokoro
        except ImportError as exc:  # pragma: no cover - both are declared dependencies
            raise RuntimeError("the TTS backend needs kokoro-onnx: pip install 'voicechat[session]'") from exc
        # kokoro-onnx attaches its own stderr handler; route its records through ours instead.
        logging.getLogger("kokoro_onnx").handlers.clear()

        self.options = options
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        # Idle intra-op threads sleep instead of spinning: the cores are shared with the LLM engine (decoding
        # the rest of the reply), Whisper and other sessions. Measured on 2 cores, one phrase with one busy
        # competing thread: 1.71 s spinning vs 1.11 s not (0.88 vs 0.78 s alone).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(options.model_path),
            sess_options=session_options,
            providers=execution_providers(options.device, ort.get_available_providers()),
        )
        self._kokoro: Any = Kokoro.from_session(session, str(options.voices_path))
        with np.load(options.voices_path) as archive:
            self._styles: dict[str, npt.NDArray[np.float32]] = {
                name: np.asarray(archive[name], dtype=np.float32) for name in sorted(archive.files)
            }
        if not self._styles:
            raise ValueError(f"the voices file {options.voices_path} holds no voices")
        log.info(
            "tts model loaded",
            extra={
                "backend": "kokoro-onnx",
                "model": str(options.model_path),
                "providers": session.get_providers(),
                "voices": len(self._styles),
            },
        )

    @property
    def voices(self) -> list[str]:
        return list(self._styles)

    def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        """One clause → float32 samples at 24 kHz; empty when the text has nothing to pronounce."""
        style = self._styles.get(voice)
        if style is None:
            raise unknown_voice_error(voice, self.voices)
        check_speed(speed)
        if not text.strip():
            return np.zeros(0, dtype=np.float32)
        # Phonemise first so text with nothing speakable (an emoji, a lone dash) is silence, not an error.
        phonemes: str = self._kokoro.tokenizer.phonemize(text, self.options.lang)
        # Punctuation alone ("...") would still make the model breathe for a quarter second.
        if not any(ch.isalpha() for ch in phonemes):
            return np.zeros(0, dtype=np.float32)
        samples, rate = self._kokoro.create(phonemes, voice=style, speed=speed, is_phonemes=True)
        if rate != TTS_SAMPLE_RATE:  # pragma: no cover - Kokoro-82M is a 24 kHz model
            raise RuntimeError(f"Kokoro returned {rate} Hz audio, expected {TTS_SAMPLE_RATE}")
        return np.asarray(samples, dtype=np.float32).reshape(-1)
