"""Whisper on a short encoder window: the guards (pure), and real transcriptions that match the full window."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.session.backends.conftest import SENTENCES
from tests.support.speech import words
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.faster_whisper_stt import (
    FasterWhisperSTT,
    WhisperOptions,
    compression_ratio,
    repeats_a_phrase,
    short_window_doubt,
)
from voicechat_session.settings import SessionSettings


@pytest.mark.parametrize(
    ("text", "looped"),
    [
        ("How many days are in a week? How many days are in a week?", True),
        ("Why is the Sky Blue? Why is the Sky Blue? Why is the Sky Blue?", True),
        ("no no no no", True),
        ("thank you thank you thank you", True),
        ("no, no, no. I said three.", False),
        ("The capital of France is Paris, and the capital of Italy is Rome.", False),
        ("that that is is fine", False),
        ("", False),
    ],
)
def test_repeated_phrases_are_loops(text: str, looped: bool) -> None:
    assert repeats_a_phrase(text) is looped


def test_doubts() -> None:
    good = "What is the capital of France?"
    assert short_window_doubt(good, 1.6, ended=True, avg_logprob=-0.2) is None
    assert short_window_doubt(good, 1.6, ended=False, avg_logprob=-0.2) == "no end of text"
    assert short_window_doubt(good, 1.6, ended=True, avg_logprob=-1.5) == "low confidence"
    loop = "Paris " * 30
    assert compression_ratio(loop) > 2.4
    assert short_window_doubt(loop, 8.0, ended=True, avg_logprob=-0.1) == "repetitive"
    assert short_window_doubt("one two three four five six seven eight nine", 1.0, True, -0.1) == (
        "more words than the audio can hold"
    )


WINDOW_S = 10.0


@pytest.fixture(scope="module")
def short_stt(settings: SessionSettings) -> FasterWhisperSTT:
    options = WhisperOptions.from_settings(settings, num_workers=1)
    return FasterWhisperSTT(dataclasses.replace(options, short_window_s=WINDOW_S))


@pytest.mark.models
@pytest.mark.parametrize("text", SENTENCES)
def test_short_window_hears_what_the_full_window_hears(
    short_stt: FasterWhisperSTT, utterances: dict[str, Audio], text: str
) -> None:
    audio = utterances[text]
    assert audio.size / STT_SAMPLE_RATE <= WINDOW_S - 1
    short, doubt = short_stt.transcribe_short(audio, WINDOW_S)
    assert doubt is None, short
    assert words(short) == words(short_stt.transcribe_full(audio))


@pytest.mark.models
def test_long_or_untrusted_audio_takes_the_full_window(
    short_stt: FasterWhisperSTT, utterances: dict[str, Audio]
) -> None:
    stt = short_stt
    used, fell_back = stt.short_window_uses, stt.short_window_fallbacks
    long_audio = np.concatenate([utterances[SENTENCES[0]], np.zeros(10 * STT_SAMPLE_RATE, np.float32)])
    assert words(stt.transcribe(long_audio)) == words(SENTENCES[0])  # 10+ s: the full window, no short try
    assert (stt.short_window_uses, stt.short_window_fallbacks) == (used, fell_back)
    assert words(stt.transcribe(utterances[SENTENCES[0]])) == words(SENTENCES[0])
    assert stt.short_window_uses == used + 1
    # Silence: the short window may say "." (no words): the full window decides, and hears nothing.
    assert stt.transcribe(np.zeros(2 * STT_SAMPLE_RATE, np.float32)) == ""


def test_short_window_is_off_by_default(settings: SessionSettings) -> None:
    # It got one word of 190 wrong that the full window got right (bench/stt_window_wer.json).
    assert WhisperOptions.from_settings(settings, num_workers=1).short_window_s == 0
