"""Statistics and transcript matching used by every load test report."""

from __future__ import annotations

import pytest

from voicechat_loadtest.stats import normalize_words, percentile, ratio, summarize, word_overlap


@pytest.mark.parametrize(
    ("samples", "pct", "expected"),
    [
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        (list(map(float, range(1, 101))), 95, 95.05),
        (list(map(float, range(1, 101))), 99, 99.01),
    ],
)
def test_percentile_interpolates_like_numpy(samples: list[float], pct: float, expected: float) -> None:
    assert percentile(samples, pct) == pytest.approx(expected)


def test_percentile_refuses_no_samples_and_bad_rank() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summarize() -> None:
    s = summarize([0.3, 0.1, 0.2])
    assert (s.count, s.min, s.max) == (3, 0.1, 0.3)
    assert s.p50 == pytest.approx(0.2)
    assert s.mean == pytest.approx(0.2)
    assert s.p99 == pytest.approx(0.298)
    empty = summarize([])
    assert empty.count == 0
    assert empty.p50 is None


def test_normalize_words_drops_case_punctuation_and_spells_numbers_as_digits() -> None:
    assert normalize_words("What's the capital of France?") == ["what's", "the", "capital", "of", "france"]
    assert normalize_words("Seven days, 7 DAYS!") == ["7", "days", "7", "days"]
    assert normalize_words("It\u2019s") == ["it's"]


@pytest.mark.parametrize(
    ("expected", "heard", "score"),
    [
        ("What is the capital of France?", " what is the capital of france", 1.0),
        ("How many days are in a week?", "How many days are in a week", 1.0),
        ("Why is the sky blue?", "Why is the sky glue?", 0.8),
        ("Why is the sky blue?", "", 0.0),
        ("", "anything", 0.0),
        ("Please tell me a short joke.", "banana", 0.0),
    ],
)
def test_word_overlap(expected: str, heard: str, score: float) -> None:
    assert word_overlap(expected, heard) == pytest.approx(score)


def test_word_overlap_counts_repeated_words_once_each() -> None:
    # "the the the" against "the": one word in common out of four in total.
    assert word_overlap("the the the", "the") == pytest.approx(2 * 1 / 4)


def test_ratio() -> None:
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
