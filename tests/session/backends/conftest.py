"""Real models for the backend tests, each loaded once per test session (they take seconds and ~1 GB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.speech import speech_audio
from voicechat_session.backends.base import Audio
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxTTS
from voicechat_session.backends.loader import load_tts
from voicechat_session.backends.silero_vad import SileroVad
from voicechat_session.settings import SessionSettings

SENTENCES = (
    "What is the capital of France?",
    "The weather is sunny and warm today.",
    "Please tell me a short story about a cat.",
)


@pytest.fixture(scope="session")
def settings() -> SessionSettings:
    # Defaults, with the embedded models; the assembled Kokoro model lives in the user's cache as in production.
    return SessionSettings(workers=2, stt_threads=0)


@pytest.fixture(scope="session")
def tts(settings: SessionSettings) -> KokoroOnnxTTS:
    # As the service loads it (tts_conv=auto: the convolution kernels this machine runs faster).
    tts = load_tts(settings)
    assert isinstance(tts, KokoroOnnxTTS)
    return tts


@pytest.fixture(scope="session")
def stt(settings: SessionSettings) -> FasterWhisperSTT:
    return FasterWhisperSTT(WhisperOptions.from_settings(settings, num_workers=4))


@pytest.fixture(scope="session")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def utterances(speech_cache: Path, tts: KokoroOnnxTTS) -> dict[str, Audio]:
    """Each sentence spoken by our Kokoro backend, at 16 kHz with silence around it."""
    return {text: speech_audio(text, engine="kokoro", cache_dir=speech_cache, tts=tts) for text in SENTENCES}
