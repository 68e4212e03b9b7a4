"""Whisper on a short encoder window against the full 30 s window: word error rate and time, same speech.

The speech: the load test's shipped WAVs, the session tests' sentences (Kokoro and espeak-ng voices, as the
tests render them), longer sentences up to ~8 s, and silence / noise (a model must not invent words there).
Each utterance is transcribed on the full window and through the backend's guarded short-window path, with
the same model and settings; the short path's fallbacks are counted::

    .venv/bin/python loadtest/scripts/stt_window_wer.py --out bench/stt_window_wer.json

Run from the repository root (it imports ``tests.support.speech``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.speech import speech_audio, words
from voicechat_loadtest.speech import load_speech
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio
from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT, WhisperOptions
from voicechat_session.settings import SessionSettings

SENTENCES = (
    "What is the capital of France?",
    "The weather is sunny and warm today.",
    "Please tell me a short story about a cat.",
    "Can you remind me to call my sister at six thirty tomorrow evening?",
    "I would like to know how long it takes to drive from Paris to Berlin by car.",
    "My favourite colour is green, but my brother prefers a deep shade of blue.",
    "Turn off the lights in the kitchen and play some quiet music in the living room please.",
)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference words): substitutions + insertions + deletions."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def utterances(cache: Path) -> list[tuple[str, str, Audio]]:
    """(name, reference text, 16 kHz samples)."""
    out: list[tuple[str, str, Audio]] = []
    for speech in load_speech():
        if speech.sample_rate != STT_SAMPLE_RATE:
            raise SystemExit(f"{speech.name}: {speech.sample_rate} Hz, expected {STT_SAMPLE_RATE}")
        audio = np.frombuffer(speech.pcm, dtype="<i2").astype(np.float32) / 32768.0
        out.append((f"shipped:{speech.name}", speech.text, audio))
    for engine in ("kokoro", "espeak"):
        for text in SENTENCES:
            audio = speech_audio(text, engine=engine, cache_dir=cache)
            out.append((f"{engine}:{text[:32]}", text, audio))
    rng = np.random.default_rng(7)
    out.append(("silence 2 s", "", np.zeros(2 * STT_SAMPLE_RATE, np.float32)))
    out.append(("noise 2 s", "", (0.01 * rng.standard_normal(2 * STT_SAMPLE_RATE)).astype(np.float32)))
    return out


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0, help="short encoder window, seconds")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, default=Path(".cache/speech"))
    args = parser.parse_args()
    settings = SessionSettings()
    options = WhisperOptions.from_settings(settings, num_workers=1)
    stt = FasterWhisperSTT(WhisperOptions(**{**options.__dict__, "short_window_s": args.window}))
    samples = utterances(args.cache)
    stt.transcribe_full(samples[0][2])  # warm-up
    rows = []
    totals = {"full": [0, 0], "short": [0, 0]}
    load_start = os.getloadavg()
    for name, text, audio in samples:
        full_s, full = timed(stt.transcribe_full, audio)
        fallbacks = stt.short_window_fallbacks
        short_s, short = timed(stt.transcribe, audio)
        row = {
            "utterance": name,
            "audio_s": round(audio.size / STT_SAMPLE_RATE, 2),
            "reference": text,
            "full": full,
            "short": short,
            "full_s": round(full_s, 3),
            "short_s": round(short_s, 3),
            "fell_back": stt.short_window_fallbacks > fallbacks,
        }
        for path, hyp in (("full", full), ("short", short)):
            errors, n = word_errors(text, hyp)
            totals[path][0] += errors
            totals[path][1] += n
            row[f"{path}_errors"] = errors
        rows.append(row)
        sys.stderr.write(json.dumps(row) + "\n")
    report = {
        "model": options.model,
        "window_s": args.window,
        "threads": options.cpu_threads,
        "load_average": [load_start[0], os.getloadavg()[0]],
        "wer": {path: round(e / max(n, 1), 4) for path, (e, n) in totals.items()},
        "word_errors": {path: e for path, (e, _n) in totals.items()},
        "reference_words": totals["full"][1],
        "median_s": {
            "full": round(statistics.median(r["full_s"] for r in rows), 3),
            "short": round(statistics.median(r["short_s"] for r in rows), 3),
        },
        "fallbacks": sum(r["fell_back"] for r in rows),
        "utterances": rows,
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
