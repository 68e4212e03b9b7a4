"""Build the pipeline's models from settings, and warm them with one real inference each.

With ``sharing=pod`` the service calls :func:`load_models` once at start and shares the :class:`ModelSet`
read-only across connections; with ``sharing=connection`` it calls it per connection. Backends are imported
lazily, so a pod only imports (and needs installed) the ones its settings name.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from voicechat_session.audio import resample
from voicechat_session.backends.base import (
    STT_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    SpeechToText,
    TextToSpeech,
    VadModel,
)
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, the voice assistant is ready."


@dataclass(frozen=True)
class ModelSet:
    stt: SpeechToText
    tts: TextToSpeech
    vad: VadModel
    load_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each stage took to load (``stt``, ``tts``, ``vad``)."""


def worker_count(settings: SessionSettings) -> int:
    """Size of the pod's pool for model calls (``workers``, or the CPU cores when 0)."""
    return settings.workers or os.cpu_count() or 1


def load_stt(settings: SessionSettings) -> SpeechToText:
    if settings.stt_backend == "fake":
        from voicechat_session.backends.fake import FakeSTT

        return FakeSTT(settings.fake_stt_transcripts, settings.fake_stt_latency_ms / 1000.0)
    from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions

    # One CTranslate2 worker per pool thread, so concurrent sessions transcribe in parallel.
    return FasterWhisperSTT(WhisperOptions.from_settings(settings, num_workers=worker_count(settings)))


def load_tts(settings: SessionSettings) -> TextToSpeech:
    tts: TextToSpeech
    if settings.tts_backend == "fake":
        from voicechat_session.backends.fake import FakeTTS

        tts = FakeTTS(settings.fake_tts_ms_per_char, settings.fake_tts_latency_ms / 1000.0)
    elif settings.tts_backend == "kokoro-onnx":
        from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxOptions, KokoroOnnxTTS

        tts = KokoroOnnxTTS(KokoroOnnxOptions.from_settings(settings))
    else:
        from voicechat_session.backends.kokoro_torch_tts import KokoroTorchOptions, KokoroTorchTTS

        tts = KokoroTorchTTS.load(KokoroTorchOptions.from_settings(settings))
    if settings.tts_voice not in tts.voices:
        raise ValueError(
            f"the default voice tts_voice={settings.tts_voice!r} is not available; voices: {', '.join(tts.voices)}"
        )
    return tts


def load_vad(settings: SessionSettings) -> VadModel:
    if settings.vad_backend == "energy":
        from voicechat_session.backends.fake import EnergyVad

        return EnergyVad(settings.vad_energy_threshold)
    from voicechat_session.backends.silero_vad import SileroVad

    return SileroVad()


def load_models(settings: SessionSettings) -> ModelSet:
    """Load every stage's weights (blocking, seconds): call it off the event loop."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    stt = load_stt(settings)
    seconds["stt"] = time.perf_counter() - start
    start = time.perf_counter()
    tts = load_tts(settings)
    seconds["tts"] = time.perf_counter() - start
    start = time.perf_counter()
    vad = load_vad(settings)
    seconds["vad"] = time.perf_counter() - start
    log.info("models loaded", extra={f"{stage}_load_s": round(s, 3) for stage, s in seconds.items()})
    return ModelSet(stt=stt, tts=tts, vad=vad, load_seconds=seconds)


def warm_up(models: ModelSet, settings: SessionSettings) -> dict[str, float]:
    """One real inference per stage, chained: TTS speaks, VAD hears it, STT transcribes it.

    Returns seconds per stage (``tts``, ``vad``, ``stt``). The first call of each runtime allocates its
    buffers and picks kernels; after this a user's first turn costs what every later one does.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    speech = models.tts.synthesize(WARMUP_TEXT, settings.tts_voice, settings.tts_speed)
    seconds["tts"] = time.perf_counter() - start

    pad = np.zeros(STT_SAMPLE_RATE // 4, dtype=np.float32)
    utterance = np.concatenate([pad, resample(speech, TTS_SAMPLE_RATE, STT_SAMPLE_RATE), pad])
    start = time.perf_counter()
    probs = models.vad.stream().process(utterance)
    seconds["vad"] = time.perf_counter() - start

    start = time.perf_counter()
    text = models.stt.transcribe(utterance)
    seconds["stt"] = time.perf_counter() - start
    log.info(
        "models warm",
        extra={
            **{f"{stage}_warmup_s": round(s, 3) for stage, s in seconds.items()},
            "warmup_transcript": text,
            "warmup_audio_s": round(speech.size / TTS_SAMPLE_RATE, 2),
            "warmup_vad_max": round(max(probs, default=0.0), 3),
        },
    )
    return seconds
