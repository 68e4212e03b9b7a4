"""Measure the backends on this machine: load time, RSS, and time per call of each stage.

    python -m voicechat_session.backends.bench --repeat 5 > backends.json

Settings come from the usual ``VOICECHAT_SESSION_*`` environment. The report is JSON on stdout; medians of
``--repeat`` calls after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from voicechat_session.audio import resample
from voicechat_session.backends.base import STT_SAMPLE_RATE, TTS_SAMPLE_RATE
from voicechat_session.backends.loader import ModelSet, load_stt, load_tts, load_vad, warm_up, worker_count
from voicechat_session.settings import SessionSettings

FIRST_CLAUSE = "Sure, here is a quick answer."
SENTENCE = "What is the capital of France?"
FRAME_MS = 20


def rss_mib() -> float:
    """Resident set size of this process (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_s(fn: Callable[[], Any], repeat: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeat))


def run(settings: SessionSettings, repeat: int) -> dict[str, Any]:
    if "remote" in (settings.stt_backend, settings.tts_backend):
        # This measures models on this machine's CPU; a speech server's speed is measured where it runs.
        raise SystemExit("the backend bench measures in-process models; stt/tts_backend=remote is not one")
    report: dict[str, Any] = {"rss_mib_start": round(rss_mib(), 1), "workers": worker_count(settings)}
    load: dict[str, float] = {}
    rss: dict[str, float] = {}
    load["stt"], stt = timed(lambda: load_stt(settings))
    rss["after_stt"] = rss_mib()
    load["tts"], tts = timed(lambda: load_tts(settings))
    rss["after_tts"] = rss_mib()
    load["vad"], vad = timed(lambda: load_vad(settings))
    rss["after_vad"] = rss_mib()
    models = ModelSet(stt=stt, tts=tts, vad=vad, load_seconds=load)
    report["load_s"] = {k: round(v, 3) for k, v in load.items()}
    report["warmup_s"] = {k: round(v, 3) for k, v in warm_up(models, settings).items()}
    rss["after_warmup"] = rss_mib()
    report["rss_mib"] = {k: round(v, 1) for k, v in rss.items()}

    voice, speed = settings.tts_voice, settings.tts_speed
    clause = tts.synthesize(FIRST_CLAUSE, voice, speed)
    sentence = tts.synthesize(SENTENCE, voice, speed)
    pad = np.zeros(STT_SAMPLE_RATE // 4, np.float32)
    utterance = np.concatenate([pad, resample(sentence, TTS_SAMPLE_RATE, STT_SAMPLE_RATE), pad])
    report["tts"] = {
        "first_clause_s": round(median_s(lambda: tts.synthesize(FIRST_CLAUSE, voice, speed), repeat), 3),
        "first_clause_audio_s": round(clause.size / TTS_SAMPLE_RATE, 2),
        "sentence_s": round(median_s(lambda: tts.synthesize(SENTENCE, voice, speed), repeat), 3),
        "sentence_audio_s": round(sentence.size / TTS_SAMPLE_RATE, 2),
    }
    transcript = stt.transcribe(utterance)
    parallel = max(2, worker_count(settings))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        wall, _ = timed(lambda: list(pool.map(stt.transcribe, [utterance] * parallel)))
    report["stt"] = {
        "utterance_s": round(median_s(lambda: stt.transcribe(utterance), repeat), 3),
        "utterance_audio_s": round(utterance.size / STT_SAMPLE_RATE, 2),
        "transcript": transcript,
        f"{parallel}_parallel_wall_s": round(wall, 3),
    }
    ten_seconds = np.tile(utterance, int(np.ceil(10 * STT_SAMPLE_RATE / utterance.size)))[
        : 10 * STT_SAMPLE_RATE
    ]
    frame = STT_SAMPLE_RATE * FRAME_MS // 1000

    def stream_ten_seconds() -> None:
        stream = vad.stream()
        for start in range(0, ten_seconds.size, frame):
            stream.process(ten_seconds[start : start + frame])

    per_10s = median_s(stream_ten_seconds, repeat)
    report["vad"] = {
        f"per_{FRAME_MS}ms_frame_ms": round(1000 * per_10s / (ten_seconds.size // frame), 4),
        "per_10s_audio_s": round(per_10s, 4),
    }
    report["rss_mib_end"] = round(rss_mib(), 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="calls per measurement (median reported)")
    args = parser.parse_args(argv)
    report = run(SessionSettings(), max(1, args.repeat))
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
