"""faster-whisper on the embedded Whisper tiny.en: real transcriptions of real (Kokoro) speech."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.session.backends.conftest import SENTENCES
from tests.support.speech import speech_audio, words
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.embedded import whisper_tiny_en_dir
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions, resolve_model
from voicechat_session.settings import SessionSettings

pytestmark = pytest.mark.models


@pytest.mark.parametrize("text", SENTENCES)
def test_transcribes_spoken_sentences(stt: FasterWhisperSTT, utterances: dict[str, Audio], text: str) -> None:
    transcript = stt.transcribe(utterances[text])
    assert transcript == transcript.strip()
    assert words(transcript) == words(text)


def test_espeak_speech_is_understood(stt: FasterWhisperSTT, speech_cache: Path) -> None:
    audio = speech_audio("Please tell me a short story about a cat.", engine="espeak", cache_dir=speech_cache)
    assert words(stt.transcribe(audio)) == words("Please tell me a short story about a cat.")


def test_openmp_threads_wait_passively(stt: FasterWhisperSTT) -> None:
    # Set before CTranslate2 starts its OpenMP runtime, unless the operator chose a policy.
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_empty_audio_is_empty_text(stt: FasterWhisperSTT) -> None:
    assert stt.transcribe(np.zeros(0, np.float32)) == ""


def test_concurrent_transcriptions_do_not_mix(stt: FasterWhisperSTT, utterances: dict[str, Audio]) -> None:
    texts = [*SENTENCES, SENTENCES[0]]
    with ThreadPoolExecutor(max_workers=4) as pool:
        transcripts = list(pool.map(lambda t: stt.transcribe(utterances[t]), texts))
    assert [words(t) for t in transcripts] == [words(t) for t in texts]


def test_default_is_the_embedded_model(settings: SessionSettings) -> None:
    options = WhisperOptions.from_settings(settings, num_workers=3)
    assert options.model == str(whisper_tiny_en_dir())
    assert options.num_workers == 3
    assert options.cpu_threads >= 1
    assert (options.language, options.beam_size, options.compute_type) == ("en", 1, "int8")


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"STT model directory .* does not exist"):
        resolve_model(str(tmp_path / "whisper-missing"))
    # A name is left to faster-whisper's hub download (a production option), not treated as a path.
    assert resolve_model("small.en") == "small.en"


def test_directory_without_a_model_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="could not load the Whisper model"):
        FasterWhisperSTT(WhisperOptions(model=str(tmp_path)))


def test_accepts_any_float_input(stt: FasterWhisperSTT, utterances: dict[str, Audio]) -> None:
    # float64, 2-D: the service may hand over a view; the backend normalises it.
    audio = utterances[SENTENCES[0]].astype(np.float64).reshape(1, -1)
    assert words(stt.transcribe(audio)) == words(SENTENCES[0])  # type: ignore[arg-type]
    assert audio.shape[1] / STT_SAMPLE_RATE > 1
