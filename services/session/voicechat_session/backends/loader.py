"""Build the pipeline's models from settings, and warm them with one real inference each.

With ``sharing=pod`` the service calls :func:`load_models` once at start and shares the :class:`ModelSet`
read-only across connections; with ``sharing=connection`` it calls it per connection. Backends are imported
lazily, so a pod only imports (and needs installed) the ones its settings name.

Remote backends (``stt_backend=remote``, ``tts_backend=remote``) load nothing: they hold an HTTP client to a
speech server, and their warm-up (:func:`warm_up_async`) is one real request each. Close a loaded set with
:func:`close_models`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, ParamSpec, Protocol, TypeVar

import numpy as np

from voicechat_common.cpus import usable_cpus
from voicechat_session.audio import resample
from voicechat_session.backends.base import (
    STT_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    AsyncSpeechToText,
    SpeechServerError,
    SpeechToText,
    StreamingTextToSpeech,
    TextToSpeech,
    VadModel,
    close_backend,
)
from voicechat_session.settings import SessionSettings

log = logging.getLogger(__name__)

WARMUP_TEXT = "Hello, the voice assistant is ready."

P = ParamSpec("P")
T = TypeVar("T")

SttModel = SpeechToText | AsyncSpeechToText
"""In-process (blocking, run in the pod's pool) or remote (async)."""
TtsModel = TextToSpeech | StreamingTextToSpeech


class BlockingRunner(Protocol):
    """Runs a blocking call somewhere that does not block the event loop (the pod's pool)."""

    def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]: ...


async def run_inline(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """A :class:`BlockingRunner` for callers without an event loop of their own to protect (CLIs, tests)."""
    return fn(*args, **kwargs)


@dataclass(frozen=True)
class ModelSet:
    stt: SttModel
    tts: TtsModel
    vad: VadModel
    load_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each stage took to load (``stt``, ``tts``, ``vad``)."""


def worker_count(settings: SessionSettings) -> int:
    """Size of the pod's pool for model calls (``workers``, or one per two CPU cores when 0).

    Two threads per call: one user's transcription or first phrase runs at nearly full speed, and the pool's
    priorities (first audio before the rest of a reply) decide the order when users overlap.
    """
    return settings.workers or max(1, usable_cpus() // 2)


def threads_per_call(settings: SessionSettings) -> int:
    """Compute threads of one STT/TTS call: the cores shared out over the pool's calls (never more)."""
    return settings.model_threads or max(1, usable_cpus() // worker_count(settings))


def load_stt(settings: SessionSettings) -> SttModel:
    if settings.stt_backend == "remote":
        from voicechat_session.backends.remote import RemoteSpeechOptions, RemoteSTT

        return RemoteSTT(RemoteSpeechOptions.for_stage(settings, "stt"))
    if settings.stt_backend == "fake":
        from voicechat_session.backends.fake import FakeSTT

        return FakeSTT(settings.fake_stt_transcripts, settings.fake_stt_latency_ms / 1000.0)
    from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions

    # One CTranslate2 worker per pool thread, so concurrent sessions transcribe in parallel.
    return FasterWhisperSTT(WhisperOptions.from_settings(settings, num_workers=worker_count(settings)))


def load_tts(settings: SessionSettings) -> TtsModel:
    """The TTS model; a remote one knows its voices only after :func:`warm_up_async` asked the server."""
    if settings.tts_backend == "remote":
        from voicechat_session.backends.remote import RemoteSpeechOptions, RemoteTTS

        return RemoteTTS(RemoteSpeechOptions.for_stage(settings, "tts"), default_voice=settings.tts_voice)
    tts: TextToSpeech
    if settings.tts_backend == "fake":
        from voicechat_session.backends.fake import FakeTTS

        tts = FakeTTS(settings.fake_tts_ms_per_char, settings.fake_tts_latency_ms / 1000.0)
    elif settings.tts_backend == "kokoro-onnx":
        tts = _load_kokoro_onnx(settings)
    else:
        from voicechat_session.backends.kokoro_torch_tts import KokoroTorchOptions, KokoroTorchTTS

        tts = KokoroTorchTTS.load(KokoroTorchOptions.from_settings(settings))
    _check_default_voice(settings, tts.voices)
    return tts


def _check_default_voice(settings: SessionSettings, voices: list[str]) -> None:
    if settings.tts_voice not in voices:
        raise ValueError(
            f"the default voice tts_voice={settings.tts_voice!r} is not available; voices: {', '.join(voices)}"
        )


CONV_CALIBRATION_TEXT = "The capital of France is Paris."
CONV_CHOICES_FILE = "tts-conv-choices.json"
CONV_REWRITES: tuple[Literal["float", "gemm"], ...] = ("gemm", "float")


def _load_kokoro_onnx(settings: SessionSettings) -> TextToSpeech:
    from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxOptions, KokoroOnnxTTS

    options = KokoroOnnxOptions.from_settings(settings, threads=threads_per_call(settings))
    if settings.tts_conv == "int8":
        return KokoroOnnxTTS(options)
    from voicechat_session.backends.onnx_conv import rewritten_model

    variants: dict[str, KokoroOnnxOptions] = {"int8": options}
    for variant in CONV_REWRITES if settings.tts_conv == "auto" else (settings.tts_conv,):
        path = rewritten_model(options.model_path, settings.model_cache_dir, variant)
        if path is not None:  # None: nothing quantized to replace (e.g. a float model in tts_model_path)
            variants[variant] = replace(options, model_path=path)
    if settings.tts_conv != "auto":
        return KokoroOnnxTTS(variants.get(settings.tts_conv, options))
    if len(variants) == 1:
        return KokoroOnnxTTS(options)
    choices = ConvChoices(settings.model_cache_dir / CONV_CHOICES_FILE)
    key = ConvChoices.key(options.model_path, options.threads, list(variants))
    chosen = choices.get(key)
    if chosen in variants:
        return KokoroOnnxTTS(variants[chosen])
    seconds: dict[str, float] = {}
    fastest: tuple[str, TextToSpeech] | None = None
    for name, variant_options in variants.items():
        # One candidate held besides the fastest so far: the float variant alone has ~250 MB of weights.
        candidate = KokoroOnnxTTS(variant_options)
        seconds[name] = _phrase_seconds(candidate, settings)
        if fastest is None or seconds[name] < seconds[fastest[0]]:
            fastest = (name, candidate)
    chosen, tts = fastest or ("int8", KokoroOnnxTTS(options))
    choices.put(key, chosen, seconds)
    log.info(
        "tts convolutions chosen by measurement",
        extra={"tts_conv": chosen, **{f"{name}_phrase_s": round(s, 3) for name, s in seconds.items()}},
    )
    return tts


class ConvChoices:
    """What ``tts_conv=auto`` measured, per model, CPU, ONNX Runtime version and thread count, kept in the
    model cache: a machine measures once, not at every start (nor per connection with ``sharing=connection``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(model: Path, threads: int, variants: list[str]) -> str:
        """A new candidate variant (a newer release of this code) means measuring again."""
        import onnxruntime

        return (
            f"{model}|{_cpu_model()}|onnxruntime {onnxruntime.__version__}|threads {threads}"
            f"|variants {','.join(variants)}"
        )

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        entry = self._read().get(key)
        choice = entry.get("choice") if isinstance(entry, dict) else None
        return choice if isinstance(choice, str) else None

    def put(self, key: str, choice: str, seconds: dict[str, float]) -> None:
        data = self._read()
        data[key] = {"choice": choice, "phrase_s": {k: round(v, 3) for k, v in seconds.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache only costs a measurement at the next start
            log.warning("cannot record the tts_conv measurement", extra={"error": str(exc)})


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _phrase_seconds(tts: TextToSpeech, settings: SessionSettings) -> float:
    """One short phrase after a first call (which allocates buffers and picks kernels)."""
    tts.synthesize(CONV_CALIBRATION_TEXT, settings.tts_voice, settings.tts_speed)
    start = time.perf_counter()
    tts.synthesize(CONV_CALIBRATION_TEXT, settings.tts_voice, settings.tts_speed)
    return time.perf_counter() - start


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
    """:func:`warm_up_async` for in-process models, from code without an event loop (tests, the bench)."""
    if isinstance(models.stt, AsyncSpeechToText) or isinstance(models.tts, StreamingTextToSpeech):
        # Their HTTP clients belong to the event loop that uses them; a throwaway loop here would break them.
        raise TypeError("remote backends are warmed up on the service's event loop: use warm_up_async")
    return asyncio.run(warm_up_async(models, settings, run_inline))


async def warm_up_async(
    models: ModelSet, settings: SessionSettings, run_blocking: BlockingRunner
) -> dict[str, float]:
    """One real inference per stage, chained: TTS speaks, VAD hears it, STT transcribes it.

    Returns seconds per stage (``tts``, ``vad``, ``stt``). The first call of each runtime allocates its
    buffers and picks kernels; after this a user's first turn costs what every later one does. A remote TTS
    first lists the server's voices (the default voice must be among them); a remote stage that fails raises
    :class:`~voicechat_session.backends.base.SpeechServerError`. Blocking calls go through ``run_blocking``.
    """
    seconds: dict[str, float] = {}
    tts = models.tts
    start = time.perf_counter()
    if isinstance(tts, StreamingTextToSpeech):
        voices = await tts.refresh_voices()
        if settings.tts_voice not in voices:
            # The server's voices may change (it is being upgraded): not ready and retried, not a crash.
            raise SpeechServerError(
                f"the text-to-speech server has no voice tts_voice={settings.tts_voice!r}; "
                f"voices: {', '.join(voices[:20])}"
            )
        pieces = [
            piece async for piece in tts.stream_speech(WARMUP_TEXT, settings.tts_voice, settings.tts_speed)
        ]
        speech = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    else:
        speech = await run_blocking(tts.synthesize, WARMUP_TEXT, settings.tts_voice, settings.tts_speed)
    seconds["tts"] = time.perf_counter() - start

    pad = np.zeros(STT_SAMPLE_RATE // 4, dtype=np.float32)
    utterance = np.concatenate([pad, resample(speech, TTS_SAMPLE_RATE, STT_SAMPLE_RATE), pad])
    start = time.perf_counter()
    probs = await run_blocking(models.vad.stream().process, utterance)
    seconds["vad"] = time.perf_counter() - start

    start = time.perf_counter()
    stt = models.stt
    if isinstance(stt, AsyncSpeechToText):
        text = await stt.transcribe_async(utterance)
    else:
        text = await run_blocking(stt.transcribe, utterance)
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


async def close_models(models: ModelSet) -> None:
    """Release what the stages hold open (remote backends' HTTP clients); weights are just dropped."""
    for stage in (models.stt, models.tts, models.vad):
        await close_backend(stage)
