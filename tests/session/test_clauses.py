from __future__ import annotations

from voicechat_session.clauses import CLAUSE_MAX_CHARS, FIRST_CLAUSE_MAX_CHARS, ClauseSplitter, speakable


def _split(text: str, step: int = 3) -> list[str]:
    """Feed ``text`` in small deltas like an LLM stream; return all clauses."""
    splitter = ClauseSplitter()
    clauses: list[str] = []
    for i in range(0, len(text), step):
        clauses += splitter.push(text[i : i + step])
    if rest := splitter.flush():
        clauses.append(rest)
    return clauses


def test_sentences_are_cut_as_they_complete() -> None:
    splitter = ClauseSplitter()
    assert splitter.push("The capital of France is Paris") == []
    assert splitter.push(". It is") == ["The capital of France is Paris."]
    assert splitter.push(" lovely!") == []  # the end is only certain once whitespace follows
    assert splitter.flush() == "It is lovely!"


def test_short_first_clause_then_longer_clauses() -> None:
    text = (
        "Well, that is a good question, and I think the answer depends on many things, "
        "like the weather, the season and the time of day. Sure."
    )
    clauses = _split(text)
    assert clauses[0] == "Well, that is a good question,"
    assert all(len(c) >= 12 for c in clauses[:-1])
    assert " ".join(clauses) == text
    # Later clauses break at commas only once long enough (40 characters).
    assert "like the weather," not in clauses


def test_abbreviations_and_decimals_do_not_cut() -> None:
    assert _split("Dr. Smith paid 3.5 dollars to Mr. Jones yesterday. Then he left.") == [
        "Dr. Smith paid 3.5 dollars to Mr. Jones yesterday.",
        "Then he left.",
    ]


def test_run_on_text_is_cut_at_a_space() -> None:
    words = " ".join(["word"] * 200)
    clauses = _split(words, step=7)
    assert len(clauses[0]) <= FIRST_CLAUSE_MAX_CHARS
    assert all(len(c) <= CLAUSE_MAX_CHARS for c in clauses)
    assert " ".join(clauses) == words


def test_speakable_drops_markdown() -> None:
    assert speakable("**Paris** is the `capital` of #France") == "Paris is the capital of France"
