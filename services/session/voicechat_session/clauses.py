"""Cutting a streamed reply into TTS chunks as tokens arrive (pure).

Time to first audio is dominated by the synthesis of the first chunk (a fixed cost plus a cost per phoneme),
so the first chunk is short: the first sentence end or comma, or else a phrase boundary after three to five
words. Later chunks grow (about 3 → 6 → 12+ words): each one must be synthesized while the previous one
plays, and longer chunks spend less of the fixed per-call cost and sound more natural. Breaks are chosen
sentence end first, then comma/semicolon/colon/dash, then a plain space that does not strand a function
word, a number or an abbreviation from the word it belongs to.

The caller feeds LLM text deltas to :meth:`ChunkSplitter.push` and speaks every chunk it returns, then speaks
what :meth:`ChunkSplitter.flush` returns at the end of the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

# The first chunk: cut at its first sentence end or comma, else at a phrase boundary after FIRST_MIN_WORDS
# words, and at the latest after FIRST_MAX_WORDS.
FIRST_MIN_WORDS = 3
FIRST_MAX_WORDS = 5
# Every later chunk wants at least GROWTH x the words of the chunk before it (fewer calls, each paying TTS's fixed
# cost), at most MAX_MIN_WORDS, and is cut at twice its minimum (at most MAX_GROWTH x the chunk before it, which
# must still be playing when this one is synthesized) if no punctuation comes. Both factors shrink to what the
# measured TTS speed allows (``ChunkSplitter.max_growth``): on a CPU where synthesis runs at 0.7x real time, a
# chunk twice as long as the one playing leaves a gap.
GROWTH = 2.0
MAX_GROWTH = 3.0
MAX_MIN_WORDS = 12
# Hard cap for text without usable spaces (a URL, a run of symbols): TTS must never wait for the whole reply.
MAX_CHUNK_CHARS = 220

_WORD = re.compile(r"\S+")
# Closing quotes and brackets that may follow punctuation; typographic quotes written as escapes.
_CLOSERS = "\"')\\]\u201d\u2019"
_SENTENCE_PUNCT = re.compile(f"[.!?\u2026]+[{_CLOSERS}]*$")
_SOFT_PUNCT = re.compile(f"[,;:][{_CLOSERS}]*$")
_QUOTES = "\"'()[]\u201c\u201d\u2018\u2019"
_DASHES = frozenset({"-", "\u2013", "\u2014", "--"})  # hyphen, en dash, em dash
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "prof", "jr", "sr", "no", "approx",
        "fig", "mt", "ft", "lt", "gen", "col", "sgt", "capt", "inc", "ltd", "co", "dept", "est", "vol",
    }
)  # fmt: skip
# Words a spoken phrase should not end on (the next word belongs to them), and that usually begin a phrase.
_FUNCTION_WORDS = frozenset(
    {
        "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "about", "and",
        "or", "but", "nor", "so", "if", "as", "than", "that", "which", "who", "whose", "is", "are", "was",
        "were", "be", "been", "am", "has", "have", "had", "do", "does", "did", "will", "would", "can",
        "could", "should", "may", "might", "must", "not", "very", "my", "your", "his", "her", "its", "our",
        "their", "this", "these", "those", "i", "you", "we", "they", "he", "she", "it", "there", "some",
        "any", "no", "every", "each", "more", "most", "such", "what", "when", "where", "how", "why",
        "because", "while", "after", "before", "until", "since", "though", "although", "like",
    }
)  # fmt: skip
# Markdown and symbols the weak model sometimes emits; a voice should not read them out.
_UNSPOKEN = re.compile(r"[*_#`~>|\[\]{}<]+")
_WHITESPACE = re.compile(r"\s+")


def speakable(text: str) -> str:
    """Text as it should be spoken: markdown symbols dropped, whitespace collapsed."""
    return _WHITESPACE.sub(" ", _UNSPOKEN.sub(" ", text)).strip()


class Break(IntEnum):
    """How good a cut after a word is (higher is better)."""

    NONE = 0  # inside a unit: after a function word, a number, an abbreviation, before a dash
    WEAK = 1  # between two content words ("a good | question"), or the next word is not known yet
    PLAIN = 2  # at a phrase boundary: the next word is a function word ("France | is Paris")
    SOFT = 3  # after a comma, semicolon, colon or dash
    SENTENCE = 4  # after a sentence end


def _is_abbreviation(word: str) -> bool:
    """``Dr.``, ``e.g.``, ``U.S.``, ``p.m.``, a single initial ``J.``: a dot that does not end a sentence."""
    core = word.strip(_QUOTES).rstrip(".")
    if core.lower() in _ABBREVIATIONS or (len(core) == 1 and core.isalpha()):
        return True
    parts = core.split(".")
    return len(parts) > 1 and all(0 < len(p) <= 2 and p.isalpha() for p in parts)


def _has_speech(word: str) -> bool:
    return any(ch.isalnum() for ch in word)


def _bare(word: str) -> str:
    return word.strip(_QUOTES).lower()


def classify(word: str, next_word: str | None, first_in_chunk: bool) -> Break:
    """How good a cut right after ``word`` is; ``next_word`` is the word after it (None: not known yet)."""
    if word in _DASHES:
        return Break.SOFT  # "a city - and": cut after the dash, which is silent
    if next_word is not None and next_word in _DASHES:
        return Break.NONE  # wait for the dash: the cut goes after it
    if _SENTENCE_PUNCT.search(word):
        if _is_abbreviation(word):
            return Break.NONE
        # "1." opening a chunk is a list number, not a sentence ("1. Preheat the oven").
        if first_in_chunk and word.rstrip(".").isdigit():
            return Break.NONE
        return Break.SENTENCE
    if _SOFT_PUNCT.search(word):
        return Break.SOFT
    bare = _bare(word)
    if bare in _FUNCTION_WORDS or any(ch.isdigit() for ch in bare):
        return Break.NONE  # "the | city", "25 | dollars"
    if next_word is not None and _bare(next_word) in _FUNCTION_WORDS:
        return Break.PLAIN
    return Break.WEAK


@dataclass(frozen=True)
class _Word:
    end: int  # index in the buffer just after the word
    quality: Break
    spoken: bool  # counts as a word (not a lone dash or markdown symbol)


class ChunkSplitter:
    """``push`` LLM text deltas, get the chunks completed so far; ``flush`` the rest at the end.

    A word counts once whitespace follows it (until then the stream may still be extending it), and a cut
    between words waits for the next word, which tells whether the cut falls at a phrase boundary.
    """

    def __init__(
        self,
        first_min_words: int = FIRST_MIN_WORDS,
        first_max_words: int = FIRST_MAX_WORDS,
        growth: float = GROWTH,
        max_min_words: int = MAX_MIN_WORDS,
        max_chars: int = MAX_CHUNK_CHARS,
    ) -> None:
        if not 1 <= first_min_words <= first_max_words:
            raise ValueError(
                f"need 1 <= first_min_words <= first_max_words, got {first_min_words}, {first_max_words}"
            )
        if growth < 1 or max_min_words < 1 or max_chars < 1:
            raise ValueError("growth must be >= 1, max_min_words and max_chars positive")
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.growth = growth
        self.max_min_words = max_min_words
        self.max_chars = max_chars
        self.max_growth: float | None = None
        """How many times longer than the last chunk the next may be and still be synthesized while the last
        one plays (set from the measured TTS speed); ``None``: the static rule."""
        self._buf = ""
        self._emitted = 0
        self._last_words = 0  # spoken words of the last chunk

    @property
    def emitted(self) -> int:
        """Chunks returned so far (by ``push`` and ``flush``)."""
        return self._emitted

    def word_budget(self) -> tuple[int, int]:
        """(minimum, maximum) words of the next chunk."""
        if self._emitted == 0:
            return self.first_min_words, self.first_max_words
        # At most ~3x the last chunk: a longer one would still be synthesizing when that one ends playing.
        # Where TTS is known to be slower (``max_growth``), at most what it synthesizes in that time.
        cap = MAX_GROWTH if self.max_growth is None else max(1.0, min(MAX_GROWTH, self.max_growth))
        lo = max(1, min(self.max_min_words, round(self._last_words * min(self.growth, cap))))
        return lo, max(lo, min(2 * lo, int(cap * self._last_words)))

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        chunks: list[str] = []
        while (cut := self._next_cut()) is not None:
            chunk, self._buf = self._buf[:cut], self._buf[cut:]
            if text := self._take(chunk):
                chunks.append(text)
        return chunks

    def flush(self) -> str | None:
        text, self._buf = self._take(self._buf), ""
        return text

    def _take(self, chunk: str) -> str | None:
        text = chunk.strip()
        if not text:
            return None
        self._emitted += 1
        self._last_words = sum(_has_speech(word) for word in text.split())
        return text

    def _words(self) -> list[_Word]:
        """Complete words of the buffer (followed by whitespace) with the quality of a cut after each."""
        matches = list(_WORD.finditer(self._buf))
        if matches and matches[-1].end() == len(self._buf):
            matches.pop()  # still growing
        words = []
        for i, match in enumerate(matches):
            quality = classify(
                match.group(), matches[i + 1].group() if i + 1 < len(matches) else None, i == 0
            )
            if "\n" in self._buf[match.end() : matches[i + 1].start() if i + 1 < len(matches) else None]:
                quality = Break.SENTENCE  # a line break ends a list item or a heading
            words.append(_Word(match.end(), quality, _has_speech(match.group())))
        return words

    def _next_cut(self) -> int | None:
        lo, hi = self.word_budget()
        first = self._emitted == 0
        count = 0
        sentence_end: int | None = None  # the latest sentence end in this chunk
        best: tuple[Break, int] | None = None  # the best break so far that keeps half the minimum
        for word in self._words():
            count += word.spoken
            if count == 0:
                continue  # nothing to say yet (leading symbols)
            if word.quality == Break.SENTENCE:
                # Whole sentences are the most natural chunks; only a one-word sentence waits for more.
                if first or count >= min(lo, 2):
                    return word.end
                sentence_end = word.end
            elif word.quality == Break.SOFT and (first or count >= lo):
                # A chunk of whole sentences sounds better than one that ends mid-sentence.
                return sentence_end if sentence_end is not None else word.end
            elif first and word.quality == Break.PLAIN and count >= lo:
                return word.end  # first audio matters most: no waiting for punctuation
            if (
                word.quality > Break.NONE
                and count >= (lo + 1) // 2
                and (best is None or word.quality >= best[0])
            ):
                best = (word.quality, word.end)
            if count >= hi:
                # Over budget: a sentence end, else the best phrase break; only between two content words
                # ("a good | question") if a few more words bring nothing better.
                if sentence_end is not None:
                    return sentence_end
                if best is not None and best[0] >= Break.PLAIN:
                    return best[1]
                if count >= hi + max(2, hi // 4):
                    return best[1] if best is not None else word.end
        if len(self._buf) > self.max_chars:
            space = self._buf.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None


# The reply pipeline's name for it.
ClauseSplitter = ChunkSplitter


def split_text(text: str, step: int = 4, splitter: ChunkSplitter | None = None) -> list[str]:
    """All chunks of ``text`` fed in deltas of ``step`` characters, as an LLM stream would (for tests, tools)."""
    splitter = splitter or ChunkSplitter()
    chunks: list[str] = []
    for i in range(0, len(text), step):
        chunks += splitter.push(text[i : i + step])
    if rest := splitter.flush():
        chunks.append(rest)
    return chunks
