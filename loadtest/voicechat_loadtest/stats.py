"""Pure statistics for latency samples and transcript matching (no I/O, unit-tested)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

PERCENTILES = (50, 95, 99)
_WORD = re.compile(r"[a-z0-9']+")
# Spelled-out numbers Whisper may write as digits (and vice versa): compare in one form.
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}  # fmt: skip


def percentile(samples: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method). ``samples`` must not be empty."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} outside 0..100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Summary(BaseModel):
    """Distribution of one latency metric, in seconds (``None`` when there were no samples)."""

    count: int
    mean: float | None = None
    min: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        return Summary(count=0)
    return Summary(
        count=len(samples),
        mean=sum(samples) / len(samples),
        min=min(samples),
        p50=percentile(samples, 50),
        p95=percentile(samples, 95),
        p99=percentile(samples, 99),
        max=max(samples),
    )


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers as digits: "What's 2 + Two?" → ["what's", "2", "2"]."""
    return [_NUMBER_WORDS.get(word, word) for word in _WORD.findall(text.lower().replace("\u2019", "'"))]


def word_overlap(expected: str, heard: str) -> float:
    """F1 of the two texts' word multisets: 1.0 for the same words, 0.0 for none in common or an empty side."""
    want, got = Counter(normalize_words(expected)), Counter(normalize_words(heard))
    total = sum(want.values()) + sum(got.values())
    if not want or not got:
        return 0.0
    return 2 * sum((want & got).values()) / total


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
