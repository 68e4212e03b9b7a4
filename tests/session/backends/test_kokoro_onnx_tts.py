"""Kokoro-82M through kokoro-onnx on the embedded int8 model: real speech, checked by real Whisper."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from tests.support.speech import is_silent, rms_dbfs, words
from voicechat_session.audio import resample
from voicechat_session.backends.base import STT_SAMPLE_RATE, TTS_SAMPLE_RATE
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxOptions, KokoroOnnxTTS, execution_providers
from voicechat_session.backends.onnx_conv import rewritten_model
from voicechat_session.settings import SessionSettings

pytestmark = pytest.mark.models

EMBEDDED_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def hear(stt: FasterWhisperSTT, audio: np.ndarray) -> list[str]:
    """What Whisper understands of 24 kHz TTS output."""
    pad = np.zeros(STT_SAMPLE_RATE // 4, np.float32)
    return words(
        stt.transcribe(np.concatenate([pad, resample(audio, TTS_SAMPLE_RATE, STT_SAMPLE_RATE), pad]))
    )


def test_voices_are_the_embedded_ones(tts: KokoroOnnxTTS) -> None:
    assert tts.voices == EMBEDDED_VOICES


def test_speaks_a_sentence_that_whisper_understands(tts: KokoroOnnxTTS, stt: FasterWhisperSTT) -> None:
    text = "The weather is sunny and warm today."
    audio = tts.synthesize(text, "jf_alpha", 1.0)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert 1.0 < audio.size / TTS_SAMPLE_RATE < 6.0
    assert float(np.max(np.abs(audio))) <= 1.0
    assert rms_dbfs(audio) > -30
    assert not is_silent(audio, TTS_SAMPLE_RATE)
    assert hear(stt, audio) == words(text)


def test_idle_compute_threads_sleep_rather_than_spin(tts: KokoroOnnxTTS) -> None:
    # The cores are shared with the LLM engine and Whisper: spinning threads slow them (and the phrase) down.
    options = tts._kokoro.sess.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_speed_changes_duration(tts: KokoroOnnxTTS) -> None:
    text = "One two three four five six."
    normal = tts.synthesize(text, "jm_kumo", 1.0).size
    fast = tts.synthesize(text, "jm_kumo", 1.5).size
    assert fast < 0.85 * normal


def test_unknown_voice_lists_the_voices(tts: KokoroOnnxTTS) -> None:
    with pytest.raises(ValueError, match=r"unknown voice 'af_nope'.*jf_alpha, jf_gongitsune"):
        tts.synthesize("Hello.", "af_nope", 1.0)


def test_bad_speed_is_a_value_error(tts: KokoroOnnxTTS) -> None:
    with pytest.raises(ValueError, match="speed must be between"):
        tts.synthesize("Hello.", "jf_alpha", 3.0)


@pytest.mark.parametrize("text", ["", "   ", "...", "—"])
def test_nothing_to_say_is_silence_not_an_error(tts: KokoroOnnxTTS, text: str) -> None:
    audio = tts.synthesize(text, "jf_alpha", 1.0)
    assert audio.dtype == np.float32
    assert audio.size == 0


def test_text_longer_than_the_model_context_is_split_not_cut(tts: KokoroOnnxTTS) -> None:
    # Beyond the model's 510-phoneme context kokoro-onnx's tokenizer raises rather than truncates, so audio
    # for a longer text proves it was split into batches; its length per phoneme proves none was dropped.
    # Speed 2 halves the work.
    sentence = "Numbers are fun to count out loud, one after another, slowly and clearly."
    text = " ".join([sentence] * 7)
    count = len(tts._kokoro.tokenizer.phonemize(text, "en-us"))
    assert count > 510
    short = tts.synthesize(sentence, "jf_alpha", 2.0).size / len(
        tts._kokoro.tokenizer.phonemize(sentence, "en-us")
    )
    long = tts.synthesize(text, "jf_alpha", 2.0).size / count
    assert long == pytest.approx(short, rel=0.25)


def test_concurrent_synthesis_is_correct(tts: KokoroOnnxTTS, stt: FasterWhisperSTT) -> None:
    jobs = [
        ("What is the capital of France?", "jf_alpha"),
        ("Please tell me a short story about a cat.", "jm_kumo"),
        ("The weather is sunny and warm today.", "jf_nezumi"),
        ("Hello, how are you?", "jf_alpha"),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        audios = list(pool.map(lambda job: tts.synthesize(job[0], job[1], 1.0), jobs))
    for (text, _voice), audio in zip(jobs, audios, strict=True):
        assert hear(stt, audio) == words(text)


def test_configured_paths_must_exist(tmp_path: Path) -> None:
    settings = SessionSettings(tts_model_path=tmp_path / "missing.onnx", tts_voices_path=tmp_path / "v.npz")
    with pytest.raises(FileNotFoundError, match=r"Kokoro model file .*missing\.onnx does not exist"):
        KokoroOnnxOptions.from_settings(settings)


def test_cuda_needs_the_gpu_build_of_onnxruntime() -> None:
    assert execution_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert execution_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(RuntimeError, match="install onnxruntime-gpu"):
        execution_providers("cuda", ["CPUExecutionProvider"])


@pytest.mark.parametrize("variant", ["gemm", "float"])
def test_rewritten_convolutions_speak_as_the_integer_ones(
    tts: KokoroOnnxTTS, stt: FasterWhisperSTT, settings: SessionSettings, variant: Literal["gemm", "float"]
) -> None:
    quantized = KokoroOnnxTTS(KokoroOnnxOptions.from_settings(settings))
    path = rewritten_model(quantized.options.model_path, settings.model_cache_dir, variant)
    assert path is not None
    variant_tts = KokoroOnnxTTS(replace(quantized.options, model_path=path))
    text = "Please tell me a short story about a cat."
    reference, rewritten = (t.synthesize(text, "jf_alpha", 1.0) for t in (quantized, variant_tts))
    # The same integer sums: the same durations and the same waveform (float: within float rounding).
    assert abs(reference.size - rewritten.size) <= TTS_SAMPLE_RATE // 100
    n = min(reference.size, rewritten.size)
    if variant == "gemm":
        assert reference.size == rewritten.size
        assert float(np.abs(reference - rewritten).max()) < 1e-4
    assert float(np.corrcoef(reference[:n], rewritten[:n])[0, 1]) > 0.98
    assert hear(stt, rewritten) == words(text)
