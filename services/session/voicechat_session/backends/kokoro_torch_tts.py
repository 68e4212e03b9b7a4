"""Text to speech with hexgrad's ``kokoro`` package (PyTorch ``KModel`` + ``KPipeline``), for GPU pods.

``KModel`` fetches ``config.json`` and ``kokoro-v1_0.pth`` from the hub unless local files are configured,
and the English G2P (misaki) may fetch a spaCy model at first use: this backend is for pods with hub access
(or a pre-populated cache). Install with ``pip install 'voicechat[kokoro-torch]'``; it is imported lazily so
CPU pods never need torch.

API used (kokoro 0.9.x): ``KModel(repo_id=, config=, model=)``, ``.to(device).eval()``;
``KPipeline(lang_code=, repo_id=, model=)``; ``pipeline(text, voice=, speed=, split_pattern=)`` yields
``KPipeline.Result`` items whose ``.audio`` is a 1-D float tensor at 24 kHz (``None`` without a model).
A voice is a name (``voices/<name>.pt`` on the hub) or a path to a ``.pt`` file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicechat_session.backends.base import TTS_SAMPLE_RATE, Audio
from voicechat_session.backends.kokoro_onnx_tts import check_speed, unknown_voice_error
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

DEFAULT_REPO_ID = "hexgrad/Kokoro-82M"
INSTALL_HINT = "pip install 'voicechat[kokoro-torch]' (PyTorch + hexgrad's kokoro)"


class KokoroPipeline(Protocol):
    """The part of ``kokoro.KPipeline`` this adapter calls."""

    def __call__(self, text: str, voice: str, speed: float, split_pattern: str | None) -> Iterable[Any]: ...


@dataclass(frozen=True)
class KokoroTorchOptions:
    lang: str = "en-us"
    device: str = "cpu"
    repo_id: str = DEFAULT_REPO_ID
    model_path: Path | None = None
    """A local ``kokoro-v1_0.pth``; its ``config.json`` is expected beside it. None: from the hub."""
    voices_dir: Path | None = None
    """A directory of ``<voice>.pt`` files. None: voices are fetched from the hub by name."""

    @classmethod
    def from_settings(cls, settings: SessionSettings) -> KokoroTorchOptions:
        voices = settings.tts_voices_path
        if voices is not None and not voices.is_dir():
            raise FileNotFoundError(
                f"tts_voices_path {voices} must be a directory of <voice>.pt files for tts_backend=kokoro"
            )
        model = settings.tts_model_path
        if model is not None and not model.is_file():
            raise FileNotFoundError(f"Kokoro model file {model} does not exist")
        return cls(lang=settings.tts_lang, device=settings.tts_device, model_path=model, voices_dir=voices)


def import_kokoro() -> Any:
    """The ``kokoro`` module, or a clear error naming what to install."""
    try:
        import kokoro
    except ImportError as exc:
        raise RuntimeError(f"tts_backend=kokoro needs the kokoro package: {INSTALL_HINT}") from exc
    return kokoro


def to_float32(audio: Any) -> Audio:
    """A pipeline chunk (torch tensor on any device, numpy array or sequence) → 1-D float32 numpy."""
    if hasattr(audio, "detach"):  # torch.Tensor, possibly on the GPU
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def list_hub_voices(repo_id: str) -> list[str]:
    from huggingface_hub import list_repo_files  # a dependency of kokoro

    return sorted(
        Path(name).stem
        for name in list_repo_files(repo_id)
        if name.startswith("voices/") and name.endswith(".pt")
    )


class KokoroTorchTTS:
    """:class:`~voicechat_session.backends.base.TextToSpeech` over ``kokoro.KPipeline``; thread-safe.

    ``KPipeline`` keeps a voice cache it fills on first use and misaki's G2P is not documented as
    thread-safe, so calls are serialised; on a GPU one clause takes tens of milliseconds.
    """

    sample_rate = TTS_SAMPLE_RATE

    def __init__(self, pipeline: KokoroPipeline, voices: list[str], voices_dir: Path | None = None) -> None:
        """Wraps a ready pipeline; :meth:`load` builds the real one. Tests pass a stand-in pipeline."""
        if not voices:
            raise ValueError("no Kokoro voices available")
        self._pipeline = pipeline
        self._voices = sorted(voices)
        self._voices_dir = voices_dir
        self._lock = threading.Lock()

    @classmethod
    def load(cls, options: KokoroTorchOptions) -> KokoroTorchTTS:
        kokoro = import_kokoro()
        config = None
        if options.model_path is not None:
            config_path = options.model_path.with_name("config.json")
            if not config_path.is_file():
                raise FileNotFoundError(
                    f"{config_path} (Kokoro's config.json) must sit beside {options.model_path}"
                )
            config = str(config_path)
        model = kokoro.KModel(
            repo_id=options.repo_id,
            config=config,
            model=str(options.model_path) if options.model_path else None,
        )
        model = model.to(options.device).eval()
        pipeline = kokoro.KPipeline(lang_code=options.lang, repo_id=options.repo_id, model=model)
        if options.voices_dir is not None:
            voices = sorted(p.stem for p in options.voices_dir.glob("*.pt"))
        else:
            voices = list_hub_voices(options.repo_id)
        log.info(
            "tts model loaded", extra={"backend": "kokoro", "device": options.device, "voices": len(voices)}
        )
        return cls(pipeline, voices, options.voices_dir)

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: float) -> Audio:
        if voice not in self._voices:
            raise unknown_voice_error(voice, self._voices)
        check_speed(speed)
        if not text.strip():
            return np.zeros(0, dtype=np.float32)
        voice_ref = str(self._voices_dir / f"{voice}.pt") if self._voices_dir is not None else voice
        with self._lock:
            # split_pattern=None: the service already hands us one clause; KPipeline still splits text
            # longer than the model's 510-phoneme context.
            chunks = [
                to_float32(result.audio)
                for result in self._pipeline(text, voice=voice_ref, speed=speed, split_pattern=None)
                if result.audio is not None
            ]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks)
