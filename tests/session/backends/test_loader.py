"""Loading the pod's models from settings and warming them with one real inference per stage."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.speech import words
from voicechat_session.audio import resample
from voicechat_session.backends.base import (
    STT_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    SpeechToText,
    TextToSpeech,
    VadModel,
)
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxTTS
from voicechat_session.backends.loader import WARMUP_TEXT, ModelSet, load_models, warm_up, worker_count
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


def test_unknown_default_voice_fails_at_load(settings: SessionSettings) -> None:
    bad = settings.model_copy(update={"tts_voice": "af_nope"})
    with pytest.raises(ValueError, match=r"tts_voice='af_nope' is not available; voices: jf_alpha"):
        load_models(bad)
