"""Cutting a streamed reply into clauses for TTS as tokens arrive (pure).

Speech can start as soon as one clause is complete, so the first clause is allowed to be short (a quick first
phrase); later clauses break at sentence ends, or at commas and semicolons once they are long enough to
sound natural; a run-on without punctuation is cut at a space so TTS never waits for the whole reply.
"""

from __future__ import annotations

import re

FIRST_CLAUSE_MIN_CHARS = 12
CLAUSE_MIN_CHARS = 40
FIRST_CLAUSE_MAX_CHARS = 80
CLAUSE_MAX_CHARS = 220

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s|\n+")
_SOFT_BREAK = re.compile(r"[,;:]\s|\s[-\u2013\u2014]\s")  # commas, semicolons, colons, dashes
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "prof", "jr", "sr", "no"}
)
# Markdown and symbols the weak model sometimes emits; a voice should not read them out.
_UNSPOKEN = re.compile(r"[*_#`~>|\[\]{}<]+")
_WHITESPACE = re.compile(r"\s+")


def speakable(text: str) -> str:
    """Text as it should be spoken: markdown symbols dropped, whitespace collapsed."""
    return _WHITESPACE.sub(" ", _UNSPOKEN.sub(" ", text)).strip()


def _is_abbreviation(text: str, dot_index: int) -> bool:
    word = text[:dot_index].rsplit(maxsplit=1)[-1] if text[:dot_index].strip() else ""
    return word.lower().rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


class ClauseSplitter:
    """``push`` text deltas, get the clauses completed so far; ``flush`` the rest at the end."""

    def __init__(
        self,
        first_min_chars: int = FIRST_CLAUSE_MIN_CHARS,
        min_chars: int = CLAUSE_MIN_CHARS,
        max_chars: int = CLAUSE_MAX_CHARS,
        first_max_chars: int = FIRST_CLAUSE_MAX_CHARS,
    ) -> None:
        self.first_min_chars = first_min_chars
        self.first_max_chars = first_max_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        clauses: list[str] = []
        while (cut := self._next_cut()) is not None:
            clause, self._buf = self._buf[:cut], self._buf[cut:]
            if text := clause.strip():
                clauses.append(text)
                self._emitted += 1
        return clauses

    def flush(self) -> str | None:
        text, self._buf = self._buf.strip(), ""
        if text:
            self._emitted += 1
        return text or None

    def _next_cut(self) -> int | None:
        buf = self._buf
        min_soft = self.first_min_chars if self._emitted == 0 else self.min_chars
        for match in _SENTENCE_END.finditer(buf):
            real_end = match.group().startswith("\n") or not _is_abbreviation(buf, match.start())
            if real_end and len(buf[: match.end()].strip()) >= 2:
                return match.end()
        for match in _SOFT_BREAK.finditer(buf):
            if len(buf[: match.start()].strip()) >= min_soft:
                return match.end()
        max_chars = self.first_max_chars if self._emitted == 0 else self.max_chars
        if len(buf) > max_chars:
            space = buf.rfind(" ", 0, max_chars)
            return space + 1 if space > 0 else max_chars
        return None
