"""Speech to text with faster-whisper (CTranslate2): one model per pod, transcriptions in parallel.

Whisper's encoder always sees a 30 s window, padded with silence, so a 2 s question costs as much as a 28 s
one. For short utterances the encoder can run on a shorter window through CTranslate2 directly (its cost
shrinks with the window; ``WhisperOptions.short_window_s``, off by default), guarded against what short windows can cause (a phrase repeated in a loop, a
hallucinated or low-confidence text): any doubt and the utterance is transcribed again on the full window.
``loadtest/scripts/stt_window_wer.py`` compares the two on the shipped speech.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicechat_common.cpus import usable_cpus
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
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
    short_window_s: float = 0.0
    """Encoder window for utterances at least 1 s shorter than it; 0 = always the full 30 s window.

    Off by default: on the shipped speech a 10 s (or 15 s) window is ~4x faster but got one word of 190
    wrong that the full window got right (bench/stt_window_wer.json), and it ships only without a loss.
    """

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
    return max(1, min(4, usable_cpus() // max(1, num_workers)))


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


# Whisper's own fallback thresholds (faster-whisper's defaults), and what speech can plausibly hold.
MAX_COMPRESSION_RATIO = 2.4
MIN_AVG_LOGPROB = -1.0
MAX_WORDS_PER_SECOND = 5.0
SHORT_WINDOW_TAIL_S = 1.0  # silence kept after the speech inside the short window
FULL_WINDOW_S = 30.0
_WORDS = re.compile(r"[\w']+")


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeats_a_phrase(text: str) -> bool:
    """A phrase of 3+ words said twice in a row, or one word 4 times: a decoder loop, not speech."""
    words = [w.lower() for w in _WORDS.findall(text)]
    for size in range(1, len(words) // 2 + 1):
        times = 4 if size == 1 else 2 if size >= 3 else 3
        for start in range(len(words) - size * times + 1):
            phrase = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == phrase for k in range(1, times)):
                return True
    return False


def short_window_doubt(text: str, duration_s: float, ended: bool, avg_logprob: float) -> str | None:
    """Why a short-window transcript is not trusted (None: trusted)."""
    if not ended:
        return "no end of text"
    if not _WORDS.search(text):
        return "no words"  # "." on silence: the full window decides whether anything was said
    if avg_logprob < MIN_AVG_LOGPROB:
        return "low confidence"
    if compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return "repetitive"
    if repeats_a_phrase(text):
        return "repeated phrase"
    if len(_WORDS.findall(text)) > MAX_WORDS_PER_SECOND * duration_s + 2:
        return "more words than the audio can hold"
    return None


class FasterWhisperSTT:
    """:class:`~voicechat_session.backends.base.SpeechToText` over ``faster_whisper.WhisperModel``.

    Thread-safe: CTranslate2 runs up to ``num_workers`` transcriptions in parallel (one model replica of
    compute state per worker, weights shared), so size it to the pod's worker pool.
    """

    def __init__(self, options: WhisperOptions) -> None:
        # CTranslate2's OpenMP threads sleep when idle instead of spinning (read when the runtime starts, so
        # before the import): the cores are shared with TTS, the LLM engine and other sessions. Measured on 2
        # cores, a 2.5 s utterance with one busy competing thread: 767 ms spinning vs 628 ms passive.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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

        self.short_window_uses = 0
        self.short_window_fallbacks = 0

    def transcribe(self, audio: Audio) -> str:
        """One utterance at 16 kHz → its text, stripped."""
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return ""
        window = self.options.short_window_s
        duration = samples.size / STT_SAMPLE_RATE
        if 0 < window < FULL_WINDOW_S and duration <= window - SHORT_WINDOW_TAIL_S:
            text, doubt = self.transcribe_short(samples, window)
            if doubt is None:
                self.short_window_uses += 1
                return text
            self.short_window_fallbacks += 1
            log.info("short stt window not trusted", extra={"reason": doubt, "audio_s": round(duration, 2)})
        return self.transcribe_full(samples)

    def transcribe_short(self, samples: Audio, window_s: float) -> tuple[str, str | None]:
        """Greedy/beam decoding of one utterance on a ``window_s`` encoder window: (text, doubt or None)."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._model
        extractor = model.feature_extractor
        frames = round(window_s * STT_SAMPLE_RATE / extractor.hop_length)
        features = extractor(samples)[..., :-1]  # as faster-whisper does: drop the padding frame
        padded = np.zeros((features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[1])
        padded[:, :used] = features[:, :used]
        tokenizer = Tokenizer(
            model.hf_tokenizer,
            model.model.is_multilingual,
            task="transcribe",
            language=self.options.language or "en",
        )
        encoded = model.model.encode(ctranslate2.StorageView.from_array(padded[None]), to_cpu=False)
        duration = samples.size / STT_SAMPLE_RATE
        # Speech holds at most ~5 words (~8 tokens) a second: a bound that also stops a looping decoder.
        max_length = min(model.max_length, int(10 * duration) + 16)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size,
            max_length=max_length,
            return_scores=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(tokens).strip()
        # As faster-whisper recovers it: the score is the length-normalized cumulative log-probability.
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        ended = len(prompt) + len(tokens) + 1 < max_length  # stopped at end-of-text, not at the bound
        return text, short_window_doubt(text, duration, ended, avg_logprob)

    def transcribe_full(self, samples: Audio) -> str:
        """Whisper's standard path: the 30 s window."""
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
