"""Speech to text with faster-whisper (CTranslate2): one model per pod, transcriptions in parallel."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicechat_session.backends.base import Audio
from voicechat_session.backends.embedded import whisper_tiny_en_dir
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperOptions:
    model: str
    """A CTranslate2 model directory, or a model name the hub resolves (needs network)."""
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    num_workers: int = 1
    language: str | None = "en"
    beam_size: int = 1
    download_root: str | None = None

    @classmethod
    def from_settings(cls, settings: SessionSettings, num_workers: int) -> WhisperOptions:
        return cls(
            model=resolve_model(settings.stt_model),
            device=settings.stt_device,
            compute_type=settings.stt_compute_type,
            cpu_threads=settings.stt_threads or settings.model_threads or default_cpu_threads(num_workers),
            num_workers=num_workers,
            language=settings.stt_language or None,
            beam_size=settings.stt_beam_size,
            download_root=str(settings.model_cache_dir / "whisper"),
        )


def default_cpu_threads(num_workers: int = 1) -> int:
    # CTranslate2 defaults to 4 threads per worker, which oversubscribes small pods: share the cores out
    # over the parallel transcriptions, up to 4 each.
    return max(1, min(4, (os.cpu_count() or 1) // max(1, num_workers)))


def resolve_model(configured: str | None) -> str:
    """The embedded tiny.en directory by default; a configured directory must exist."""
    if not configured:
        return str(whisper_tiny_en_dir())
    path = Path(configured).expanduser()
    if path.is_dir():
        return str(path)
    # Absolute or relative paths must exist; anything else is a hub name ("small.en", "Systran/…").
    if path.exists() or configured.startswith(("/", ".", "~")):
        raise FileNotFoundError(
            f"STT model directory {configured!r} does not exist (or is not a directory holding a CTranslate2 "
            "Whisper model: model.bin, config.json, tokenizer.json)"
        )
    return configured


class FasterWhisperSTT:
    """:class:`~voicechat_session.backends.base.SpeechToText` over ``faster_whisper.WhisperModel``.

    Thread-safe: CTranslate2 runs up to ``num_workers`` transcriptions in parallel (one model replica of
    compute state per worker, weights shared), so size it to the pod's worker pool.
    """

    def __init__(self, options: WhisperOptions) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:  # pragma: no cover - faster-whisper is a declared dependency
            raise RuntimeError(
                "the STT backend needs faster-whisper: pip install 'voicechat[session]'"
            ) from exc
        self.options = options
        library_log = logging.getLogger("faster_whisper")
        if library_log.level == logging.NOTSET:
            # It logs every utterance's duration at INFO: noise at one call per turn per session.
            library_log.setLevel(logging.WARNING)
        try:
            self._model: Any = WhisperModel(
                options.model,
                device=options.device,
                compute_type=options.compute_type,
                cpu_threads=options.cpu_threads,
                num_workers=options.num_workers,
                download_root=options.download_root,
            )
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            hint = " (HF_HUB_OFFLINE is set: pass a local model directory)" if offline else ""
            raise RuntimeError(f"could not load the Whisper model {options.model!r}{hint}: {exc}") from exc
        log.info(
            "stt model loaded",
            extra={
                "model": options.model,
                "device": options.device,
                "compute_type": options.compute_type,
                "cpu_threads": options.cpu_threads,
                "num_workers": options.num_workers,
            },
        )

    def transcribe(self, audio: Audio) -> str:
        """One utterance at 16 kHz → its text, stripped."""
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return ""
        segments, _info = self._model.transcribe(
            samples,
            language=self.options.language,
            beam_size=self.options.beam_size,
            # Our own VAD already cut the utterance; Whisper's would run Silero a second time.
            vad_filter=False,
            # Each utterance stands alone: earlier text would bias (and can loop) the decoder.
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        # ``segments`` is a lazy generator: decoding happens while it is consumed.
        return " ".join(segment.text.strip() for segment in segments).strip()
