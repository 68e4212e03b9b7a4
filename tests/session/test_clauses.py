from __future__ import annotations

import itertools

import pytest

from voicechat_session.clauses import (
    FIRST_MAX_WORDS,
    MAX_CHUNK_CHARS,
    MAX_MIN_WORDS,
    Break,
    ChunkSplitter,
    ClauseSplitter,
    classify,
    speakable,
    split_text,
)


def _words(chunk: str) -> int:
    return len(chunk.split())


LONG_REPLY = (
    "The capital of France is Paris, a city on the river Seine that is famous for its museums, "
    "its cafes and the Eiffel Tower, which was built for the world fair of eighteen eighty nine and "
    "was meant to stand for only twenty years before it became the symbol of the whole country."
)


@pytest.mark.parametrize("step", [1, 3, 7, 50, 10_000])
def test_chunks_do_not_depend_on_how_the_stream_is_cut(step: int) -> None:
    chunks = split_text(LONG_REPLY, step=step)
    assert " ".join(chunks) == LONG_REPLY
    assert chunks == split_text(LONG_REPLY, step=2)


def test_first_chunk_is_a_few_words_then_chunks_grow() -> None:
    text = " ".join(["alpha"] * 80) + "."
    chunks = split_text(text)
    sizes = [_words(c) for c in chunks]
    assert 3 <= sizes[0] <= FIRST_MAX_WORDS + 2
    assert sizes[1] >= 2 * sizes[0] * 0.9
    assert sizes[2] >= MAX_MIN_WORDS  # 3 -> 6 -> 12+: capped growth, then steady
    assert all(s <= 2 * MAX_MIN_WORDS + MAX_MIN_WORDS // 2 for s in sizes)
    assert " ".join(chunks) == text


def test_each_chunk_can_be_synthesized_while_the_previous_one_plays() -> None:
    # TTS time grows with words but starts with a fixed cost: ~3x the previous chunk's words is the most that
    # is ready before the previous one has played (a couple more only when no break came at all).
    sizes = [_words(c) for c in split_text(LONG_REPLY)]
    assert sizes[0] <= FIRST_MAX_WORDS
    assert all(later <= 3 * earlier + 2 for earlier, later in itertools.pairwise(sizes))
    assert max(sizes) > sizes[0]  # and they do grow


@pytest.mark.parametrize(
    ("max_growth", "budget"),
    [(None, (8, 12)), (3.0, (8, 12)), (1.5, (6, 6)), (1.0, (4, 4)), (0.5, (4, 4))],
)
def test_measured_tts_speed_caps_the_growth(max_growth: float | None, budget: tuple[int, int]) -> None:
    # After a 4-word first chunk: the static rule (2x, cut by 3x), or what TTS synthesizes while it plays;
    # never shrinking below the last chunk (a slower-than-real-time TTS has gaps whatever the size).
    splitter = ChunkSplitter()
    assert splitter.push("one two three four, five ") == ["one two three four,"]
    splitter.max_growth = max_growth
    assert splitter.word_budget() == budget


@pytest.mark.parametrize("max_growth", [0.9, 1.5])
def test_chunks_grow_only_as_fast_as_tts_allows(max_growth: float) -> None:
    splitter = ChunkSplitter()
    splitter.max_growth = max_growth
    sizes = [_words(c) for c in split_text(LONG_REPLY, splitter=splitter)]
    cap = max(1.0, max_growth)
    # Two words over only where no phrase break came sooner (the splitter's rule for any budget).
    assert all(later <= int(cap * earlier) + 2 for earlier, later in itertools.pairwise(sizes)), sizes
    assert max(sizes) < max(_words(c) for c in split_text(LONG_REPLY))  # smaller than the static rule's


def test_first_chunk_ends_at_the_first_comma_or_sentence() -> None:
    assert split_text("Sure! Here is a joke.")[0] == "Sure!"
    assert split_text("Well, that is a good question, and I think so.")[0] == "Well,"
    assert split_text("Yes.")[0] == "Yes."


def test_first_chunk_without_punctuation_cuts_at_a_phrase_boundary() -> None:
    # "France" is followed by a function word: a phrase boundary after the minimum of three words.
    assert split_text("The capital of France is Paris and it is lovely.")[0] == "The capital of France"
    # Never between two content words ("a good | question") when a better break follows soon.
    assert split_text("Well that is a good question and I think so.")[0] == "Well that is a good question"


def test_sentence_breaks_preferred_over_comma_later() -> None:
    chunks = split_text(LONG_REPLY.replace("Paris,", "Paris. It is"), step=5)
    assert chunks[:2] == ["The capital of France", "is Paris."]


def test_streaming_push_returns_chunk_as_soon_as_it_is_decided() -> None:
    splitter = ChunkSplitter()
    assert splitter.push("The capital of France") == []  # "France" may still grow
    assert splitter.push(" is") == []  # the next word decides: "is" may still grow ("island")
    assert splitter.push(" ") == ["The capital of France"]
    assert splitter.push("Paris.") == []  # the end is only certain once whitespace follows
    assert splitter.flush() == "is Paris."
    assert splitter.emitted == 2


def test_numbers_and_abbreviations_are_not_split() -> None:
    chunks = split_text(
        "Dr. Smith paid 3.5 dollars to Mr. Jones at 5 p.m. in the U.S. yesterday. Then he left."
    )
    joined = " | ".join(chunks)
    for unit in ("Dr. Smith", "3.5 dollars", "Mr. Jones", "5 p.m.", "U.S. yesterday"):
        assert unit in joined, joined
    assert chunks[-1] == "Then he left."


def test_a_streamed_decimal_is_not_a_sentence_end() -> None:
    splitter = ChunkSplitter()
    assert splitter.push("It is 3.") == []
    assert splitter.push("5 degrees today. ") == ["It is 3.5 degrees today."]


def test_list_numbers_and_line_breaks() -> None:
    assert split_text("1. Preheat the oven. 2. Mix the flour.") == [
        "1. Preheat the oven.",
        "2. Mix the flour.",
    ]
    assert split_text("Apples\nBananas and pears\nCherries") == ["Apples", "Bananas and pears", "Cherries"]


def test_dash_stays_with_the_chunk_before_it() -> None:
    chunks = split_text("The sky is blue because of Rayleigh scattering - shorter waves scatter more.")
    assert all(not c.startswith("-") for c in chunks)


def test_classify_break_quality() -> None:
    assert classify("Paris.", "It", first_in_chunk=False) == Break.SENTENCE
    assert classify("Dr.", "Smith", first_in_chunk=False) == Break.NONE
    assert classify("city,", "and", first_in_chunk=False) == Break.SOFT
    assert classify("France", "is", first_in_chunk=False) == Break.PLAIN
    assert classify("good", "question", first_in_chunk=False) == Break.WEAK
    assert classify("the", "city", first_in_chunk=False) == Break.NONE
    assert classify("25", "dollars", first_in_chunk=False) == Break.NONE


def test_text_without_spaces_is_cut_at_the_character_cap() -> None:
    blob = "x" * (3 * MAX_CHUNK_CHARS)
    chunks = split_text(blob, step=11)
    assert all(len(c) <= MAX_CHUNK_CHARS for c in chunks)
    assert "".join(chunks) == blob


def test_flush_of_nothing_and_bad_parameters() -> None:
    splitter = ClauseSplitter()
    assert splitter.push("   ") == []
    assert splitter.flush() is None
    assert splitter.emitted == 0
    with pytest.raises(ValueError, match="first_min_words"):
        ChunkSplitter(first_min_words=6, first_max_words=3)
    with pytest.raises(ValueError, match="growth"):
        ChunkSplitter(growth=0.5)


def test_speakable_drops_markdown() -> None:
    assert speakable("**Paris** is the `capital` of #France") == "Paris is the capital of France"
