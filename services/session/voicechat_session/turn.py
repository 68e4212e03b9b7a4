"""One user turn and the assistant's reply to it: its state, what was sent, and its report (pure).

A turn moves through :class:`TurnState` in one direction::

    TRANSCRIBING (voice) ─┬→ REPLYING ─→ COMPLETED
    QUEUED (text) ────────┘      └────→ INTERRUPTED, SKIPPED (a failure)
    any of the first three ─→ INTERRUPTED, SKIPPED (noise, failed transcription)

Both first states begin by waiting for the previous turn to be finalized. Only ``REPLYING`` can be barged
into. ``COMPLETED``, ``SKIPPED`` and ``INTERRUPTED`` are *ended*: nothing more of the turn
is produced. The connection then *finalizes* it (``interrupted``/``audio_end``/final ``assistant``, the
history entry, ``turn_metrics``) and resolves :attr:`Turn.finalized`, which the next turn waits for so the
history stays in order.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Literal

from voicechat_session.audio import Audio
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE, InterruptReason, TurnMetricsMessage

TurnSource = Literal["voice", "text"]
Speculation = Literal["hit", "miss", "none"]
"""hit: the reply started at a pause and was committed; miss: replies started at pauses of this utterance
were discarded (the user went on) and it ran after the end; none: no speculative start."""


class TurnState(enum.Enum):
    QUEUED = "queued"
    TRANSCRIBING = "transcribing"
    REPLYING = "replying"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"

    @property
    def ended(self) -> bool:
        return self in (TurnState.COMPLETED, TurnState.SKIPPED, TurnState.INTERRUPTED)


class TurnStateError(RuntimeError):
    """A transition the lifecycle does not allow (a bug, never user input)."""


_NEXT: dict[TurnState, frozenset[TurnState]] = {
    TurnState.QUEUED: frozenset({TurnState.REPLYING, TurnState.SKIPPED, TurnState.INTERRUPTED}),
    TurnState.TRANSCRIBING: frozenset({TurnState.REPLYING, TurnState.SKIPPED, TurnState.INTERRUPTED}),
    TurnState.REPLYING: frozenset({TurnState.COMPLETED, TurnState.SKIPPED, TurnState.INTERRUPTED}),
    TurnState.COMPLETED: frozenset(),
    TurnState.SKIPPED: frozenset(),
    TurnState.INTERRUPTED: frozenset(),
}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


@dataclass(eq=False)
class Turn:
    """One user turn and the assistant's reply to it."""

    id: int
    source: TurnSource
    user_end: float
    """perf_counter when the user's turn ended: last speech heard (voice) or the text received."""
    decided: float | None = None
    """perf_counter when the end of speech was decided (voice)."""
    audio: Audio | None = None
    """The utterance (voice turns), kept until transcribed so a superseding utterance can include it."""
    text: str | None = None
    """The user's words: typed, or once transcribed."""
    state: TurnState = TurnState.QUEUED
    interrupt_reason: InterruptReason | None = None
    keep_history: bool = True
    """False after ``reset``: the reply, however far it got, does not enter the (cleared) history."""
    task: asyncio.Task[None] | None = None
    finalized: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # What was produced and sent; indexes of the three lists are clause numbers.
    reply_started: bool = False
    """The LLM sent at least one delta (the client saw assistant text)."""
    audio_started: bool = False
    """``audio_start`` was sent."""
    clauses: list[str] = field(default_factory=list)
    clause_samples: list[int] = field(default_factory=list)
    sent_samples: list[int] = field(default_factory=list)
    # Latency breakdown (seconds).
    stt_s: float | None = None
    ttft_s: float | None = None
    llm_first_phrase_s: float | None = None
    """LLM request sent → its first phrase complete (handed to TTS)."""
    tts_first_s: float | None = None
    first_audio_at: float | None = None
    playback_stalls: int = 0
    """Times the reply's audio ran dry after it began playing (the next clause was late)."""
    playback_stall_s: float = 0.0
    speculation: Speculation = "none"
    started_at: float | None = None
    """perf_counter when the turn's work started: at a pause (speculation hit) or at the decided end."""

    def __post_init__(self) -> None:
        if self.audio is not None:
            self.state = TurnState.TRANSCRIBING

    # ------------------------------------------------------------------------------------------- state
    def advance(self, state: TurnState) -> None:
        if state not in _NEXT[self.state]:
            raise TurnStateError(f"turn {self.id}: {self.state.value} → {state.value} is not allowed")
        self.state = state

    def interrupt(self, reason: InterruptReason) -> bool:
        """Mark the turn interrupted; False when it had already ended (nothing to interrupt)."""
        if self.state.ended:
            return False
        self.interrupt_reason = reason
        self.advance(TurnState.INTERRUPTED)
        return True

    @property
    def active(self) -> bool:
        return not self.state.ended

    @property
    def interruptible_by_speech(self) -> bool:
        """The assistant is (about to be) answering this turn: new user speech is a barge-in, not more words."""
        return self.state is TurnState.REPLYING

    # ------------------------------------------------------------------------------------------ output
    def add_clause(self, text: str, samples: int) -> int:
        self.clauses.append(text)
        self.clause_samples.append(samples)
        self.sent_samples.append(0)
        return len(self.clauses) - 1

    def spoken_text(self) -> str:
        """The reply as far as its audio was sent: whole clauses, then the share of a clause cut short."""
        words: list[str] = []
        for text, total, sent in zip(self.clauses, self.clause_samples, self.sent_samples, strict=True):
            if sent >= total:
                words.append(text)
                continue
            if sent > 0:
                clause_words = text.split()
                keep = int(len(clause_words) * sent / max(total, 1))
                if keep:
                    words.append(" ".join(clause_words[:keep]))
            break
        return " ".join(words)

    @property
    def audio_ms(self) -> float:
        return 1000.0 * sum(self.sent_samples) / OUTPUT_SAMPLE_RATE

    @property
    def time_to_first_audio_s(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.user_end

    def report(self, now: float) -> TurnMetricsMessage:
        """The ``turn_metrics`` message, as of ``now`` (perf_counter)."""
        endpointing = None if self.decided is None else self.decided - self.user_end
        head_start = None
        if self.speculation == "hit" and self.decided is not None and self.started_at is not None:
            head_start = self.decided - self.started_at
        return TurnMetricsMessage(
            turn_id=self.id,
            source=self.source,
            endpointing_ms=_ms(endpointing),
            speculation=self.speculation if self.source == "voice" else None,
            speculation_head_start_ms=_ms(head_start),
            stt_ms=_ms(self.stt_s),
            llm_ttft_ms=_ms(self.ttft_s),
            llm_first_phrase_ms=_ms(self.llm_first_phrase_s),
            tts_first_chunk_ms=_ms(self.tts_first_s),
            time_to_first_audio_ms=_ms(self.time_to_first_audio_s),
            turn_ms=_ms(now - self.user_end),
            audio_ms=round(self.audio_ms, 1),
            playback_stalls=self.playback_stalls,
            playback_stall_ms=round(self.playback_stall_s * 1000.0, 1),
            interrupted=self.state is TurnState.INTERRUPTED,
        )

    def log_fields(self) -> dict[str, object]:
        return {
            "turn_id": self.id,
            "source": self.source,
            "interrupted": self.interrupt_reason,
            "ttfa_ms": _ms(self.time_to_first_audio_s),
            "speculation": self.speculation,
            "stt_ms": _ms(self.stt_s),
            "llm_ttft_ms": _ms(self.ttft_s),
            "llm_first_phrase_ms": _ms(self.llm_first_phrase_s),
            "tts_first_ms": _ms(self.tts_first_s),
        }
