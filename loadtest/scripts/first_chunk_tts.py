"""Measure what the reply chunking costs in speech synthesis: first-chunk time and playback gaps.

For a set of typical assistant replies, cut each with the chunk splitter (and optionally with another
version of ``clauses.py`` given by ``--baseline``), synthesize every chunk with the session service's TTS
backend (Kokoro-82M int8 by default), and report per reply: words and synthesis time of the first chunk
(= the TTS share of time to first audio) and the playback gap a listener would hear if chunks are
synthesized one after the other and played as soon as they are ready. ``--llm-url`` keeps streams generating
on an OpenAI-compatible engine during the measurement, the situation of a real turn on a shared CPU::

    .venv/bin/python loadtest/scripts/first_chunk_tts.py --baseline /tmp/old_clauses.py
    .venv/bin/python loadtest/scripts/first_chunk_tts.py --llm-url http://127.0.0.1:8000/v1 --streams 1

Prints JSON on stdout. Settings come from the usual ``VOICECHAT_SESSION_*`` environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from voicechat_session import clauses
from voicechat_session.backends.base import TTS_SAMPLE_RATE
from voicechat_session.backends.loader import load_tts
from voicechat_session.settings import SessionSettings

# Replies in the style SmolLM2 gives to the load test's questions (and a longer one).
REPLIES = [
    "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "The sky looks blue because air scatters the short blue wavelengths of sunlight more than the others.",
    "There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    "Sure! Why did the scarecrow win an award? Because he was outstanding in his field.",
    "Well, that depends on where you live, but most people enjoy a walk in the park on a sunny afternoon.",
    "I am a helpful voice assistant, and I can answer questions, tell jokes or help you plan your day.",
]


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_clauses", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chunks_of(module: ModuleType, text: str) -> list[str]:
    splitter = module.ClauseSplitter()
    out: list[str] = []
    for i in range(0, len(text), 4):
        out += splitter.push(text[i : i + 4])
    if rest := splitter.flush():
        out.append(rest)
    return out


def playback_gap_s(synth_s: list[float], audio_s: list[float]) -> float:
    """Silence heard between chunks when each is synthesized after the previous one and played when ready."""
    ready = 0.0
    playing_until: float | None = None
    gap = 0.0
    for synth, audio in zip(synth_s, audio_s, strict=True):
        ready += synth
        if playing_until is None:
            playing_until = ready
        elif ready > playing_until:
            gap += ready - playing_until
            playing_until = ready
        playing_until += audio
    return gap


class BackgroundLLM:
    """Keeps ``streams`` chat completions generating until stopped (the rest of a reply being written)."""

    def __init__(self, url: str, streams: int) -> None:
        self.url = url.rstrip("/") + "/chat/completions"
        self.streams = streams
        self.stop = threading.Event()
        self.tokens = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(streams)]

    def _run(self) -> None:
        body = {
            "model": "any",
            "messages": [{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
            "max_tokens": 512,
            "stream": True,
            "temperature": 0.7,
        }
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                with client.stream("POST", self.url, json=body) as response:
                    for line in response.iter_lines():
                        if self.stop.is_set():
                            break
                        if line.startswith("data: {"):
                            self.tokens += 1

    def __enter__(self) -> BackgroundLLM:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 30
        while self.tokens == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the engine is generating before the first measurement
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def synthesize_reply(
    module: ModuleType, reply: str, tts: Any, settings: SessionSettings, repeat: int
) -> dict[str, Any]:
    chunks = chunks_of(module, reply)
    synth: list[float] = []
    audio: list[float] = []
    first_cpu: list[float] = []
    for index, chunk in enumerate(chunks):
        times = []
        for _ in range(repeat if index == 0 else 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            samples = tts.synthesize(clauses.speakable(chunk), settings.tts_voice, settings.tts_speed)
            times.append(time.perf_counter() - started)
            if index == 0:
                first_cpu.append(time.process_time() - cpu_started)
        synth.append(statistics.median(times))
        audio.append(samples.size / TTS_SAMPLE_RATE)
    return {
        "chunks": chunks,
        "first_words": len(chunks[0].split()),
        "first_tts_s": round(synth[0], 3),
        # CPU seconds of this process: what the synthesis costs, whatever else the machine is doing.
        "first_tts_cpu_s": round(statistics.median(first_cpu), 3),
        "gap_s": round(playback_gap_s(synth, audio), 3),
        "audio_s": round(sum(audio), 2),
    }


def measure(
    versions: dict[str, ModuleType], tts: Any, settings: SessionSettings, repeat: int
) -> dict[str, Any]:
    """Every reply with every version in turn, so that a change in machine load hits all versions alike."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for reply in REPLIES:
        for name, module in versions.items():
            rows[name].append(synthesize_reply(module, reply, tts, settings, repeat))
    return {
        name: {
            "first_tts_s_median": round(statistics.median(r["first_tts_s"] for r in version_rows), 3),
            "first_tts_cpu_s_median": round(statistics.median(r["first_tts_cpu_s"] for r in version_rows), 3),
            "first_words_median": statistics.median(r["first_words"] for r in version_rows),
            "gap_s_total": round(sum(r["gap_s"] for r in version_rows), 3),
            "replies": version_rows,
        }
        for name, version_rows in rows.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another clauses.py to compare with")
    parser.add_argument("--repeat", type=int, default=3, help="syntheses of each first chunk (median)")
    parser.add_argument("--llm-url", help="OpenAI-compatible base URL to keep generating meanwhile")
    parser.add_argument("--streams", type=int, default=1, help="concurrent background generations")
    args = parser.parse_args()
    settings = SessionSettings()
    tts = load_tts(settings)
    tts.synthesize("Warming up the voice.", settings.tts_voice, settings.tts_speed)
    versions = {"current": clauses}
    if args.baseline:
        versions["baseline"] = load_module(args.baseline)
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "llm_url": args.llm_url}
    if args.llm_url:
        with BackgroundLLM(args.llm_url, args.streams) as llm:
            started = time.perf_counter()
            report["versions"] = measure(versions, tts, settings, args.repeat)
            report["llm_tokens_per_s"] = round(llm.tokens / (time.perf_counter() - started), 1)
    else:
        report["versions"] = measure(versions, tts, settings, args.repeat)
    report["load_average_end"] = os.getloadavg()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
