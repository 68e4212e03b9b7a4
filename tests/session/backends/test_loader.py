"""Loading the pod's models from settings and warming them with one real inference per stage."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from tests.support.speech import words
from voicechat_session.audio import resample
from voicechat_session.backends import faster_whisper_stt, loader
from voicechat_session.backends.base import (
    STT_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    SpeechToText,
    TextToSpeech,
    VadModel,
)
from voicechat_session.backends.embedded import KOKORO_MODEL_NAME
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxTTS
from voicechat_session.backends.loader import (
    CONV_CHOICES_FILE,
    WARMUP_TEXT,
    ModelSet,
    load_models,
    load_tts,
    threads_per_call,
    warm_up,
    worker_count,
)
from voicechat_session.backends.silero_vad import SileroVad
from voicechat_session.settings import SessionSettings

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def models(settings: SessionSettings) -> ModelSet:
    return load_models(settings)


def test_loads_the_embedded_backends(models: ModelSet) -> None:
    assert isinstance(models.stt, FasterWhisperSTT)
    assert isinstance(models.tts, KokoroOnnxTTS)
    assert isinstance(models.vad, SileroVad)
    # They satisfy the stage interfaces the service codes against.
    stt: SpeechToText = models.stt
    tts: TextToSpeech = models.tts
    vad: VadModel = models.vad
    assert (stt, tts, vad) == (models.stt, models.tts, models.vad)
    assert set(models.load_seconds) == {"stt", "tts", "vad"}
    assert all(s > 0 for s in models.load_seconds.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        models.stt = models.stt  # type: ignore[misc]


def test_warm_up_runs_every_stage_on_real_speech(models: ModelSet, settings: SessionSettings) -> None:
    seconds = warm_up(models, settings)
    assert set(seconds) == {"tts", "vad", "stt"}
    assert all(s > 0 for s in seconds.values())
    # The warm-up chains the stages (TTS speaks, VAD hears, STT transcribes): check the chain is sound.
    speech = resample(
        models.tts.synthesize(WARMUP_TEXT, settings.tts_voice, 1.0), TTS_SAMPLE_RATE, STT_SAMPLE_RATE
    )
    assert max(models.vad.stream().process(speech)) > settings.vad_threshold
    assert words(models.stt.transcribe(speech)) == words(WARMUP_TEXT)


def test_worker_count() -> None:
    assert worker_count(SessionSettings(workers=3)) == 3
    assert worker_count(SessionSettings(workers=0)) >= 1


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_pool_never_runs_more_compute_threads_than_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    # The CPUs the pod may use (its CPU limit, else its cores), as both modules read them.
    monkeypatch.setattr(loader, "usable_cpus", lambda: cores)
    monkeypatch.setattr(faster_whisper_stt, "usable_cpus", lambda: cores)
    settings = SessionSettings(workers=workers)
    calls, threads = worker_count(settings), threads_per_call(settings)
    assert threads >= 1
    assert calls * threads <= max(cores, calls), "oversubscribed (only more calls than cores may exceed)"
    if workers == 0:
        assert threads >= min(2, cores), "a call alone gets two cores where there are two"
    stt = WhisperOptions.from_settings(settings, num_workers=calls)
    assert calls * stt.cpu_threads <= max(cores, calls)


def test_unknown_default_voice_fails_at_load(settings: SessionSettings) -> None:
    bad = settings.model_copy(update={"tts_voice": "af_nope"})
    with pytest.raises(ValueError, match=r"tts_voice='af_nope' is not available; voices: jf_alpha"):
        load_models(bad)


def test_auto_convolutions_are_measured_once_per_machine_and_recorded(
    settings: SessionSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "models"
    auto = settings.model_copy(update={"model_cache_dir": cache, "tts_conv": "auto"})
    with caplog.at_level(logging.INFO, logger="voicechat_session.backends.loader"):
        first = load_tts(auto)
        second = load_tts(auto)
    measured = [r for r in caplog.records if r.getMessage() == "tts convolutions chosen by measurement"]
    assert len(measured) == 1  # the second load read the recorded choice
    chosen = measured[0].__dict__["tts_conv"]
    assert chosen in ("int8", "gemm", "float")
    assert isinstance(first, KokoroOnnxTTS)
    assert isinstance(second, KokoroOnnxTTS)
    assert first.options.model_path == second.options.model_path
    expected_name = KOKORO_MODEL_NAME if chosen == "int8" else f".{chosen}conv.onnx"
    assert first.options.model_path.name.endswith(expected_name)
    (entry,) = json.loads((cache / CONV_CHOICES_FILE).read_text()).values()
    assert entry["choice"] == chosen
    assert set(entry["phrase_s"]) == {"int8", "gemm", "float"}
    assert min(entry["phrase_s"].values()) == entry["phrase_s"][chosen]
    # Explicit settings are obeyed without measuring.
    explicit = load_tts(auto.model_copy(update={"tts_conv": "int8"}))
    assert isinstance(explicit, KokoroOnnxTTS)
    assert explicit.options.model_path.name == KOKORO_MODEL_NAME
    gemm = load_tts(auto.model_copy(update={"tts_conv": "gemm"}))
    assert isinstance(gemm, KokoroOnnxTTS)
    assert gemm.options.model_path.name.endswith(".gemmconv.onnx")
