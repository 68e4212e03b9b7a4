"""Speculative end of turn: a reply started at a pause, held until the end of turn is decided.

At ``speculate_silence_ms`` of silence the connection starts the turn's work (final transcription, LLM
request, first phrase's synthesis) on the utterance's audio as it will end if nobody speaks, writing into a
:class:`~voicechat_session.reply.HeldOutbox`. When the end of turn is decided on that same audio the
speculation is *committed*: the user's words enter the history, then everything held passes to the client
in order and the rest streams straight through. If the user speaks again first, it is *discarded*: its
task is cancelled (closing its LLM stream, so the engine frees the slot), nothing it produced is sent, and
the history never saw it. One per connection; none while the pod is saturated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from voicechat_session import metrics
from voicechat_session.reply import HeldOutbox, Outbox
from voicechat_session.turn import Turn

log = logging.getLogger(__name__)

Outcome = Literal["committed", "discarded", "aborted", "saturated"]


@dataclass(eq=False)
class Speculation:
    turn: Turn
    outbox: HeldOutbox

    def commit(self, decided: float) -> Turn:
        """The end of turn was decided on the paused audio: the held reply is the turn's reply."""
        self.turn.decided = decided
        self.turn.speculation = "hit"
        self.outbox.commit()
        count("committed")
        return self.turn

    def discard(self, outcome: Literal["discarded", "aborted"]) -> None:
        """Throw the work away: nothing held is sent, the LLM stream closes, the history is untouched."""
        self.outbox.discard()
        if self.turn.task is not None:
            self.turn.task.cancel()
        if not self.turn.finalized.done():
            self.turn.finalized.set_result(None)  # nobody waits on it; never leave a future pending
        count(outcome)


def count(outcome: Outcome) -> None:
    metrics.SPECULATIONS_TOTAL.labels(outcome=outcome).inc()


class Speculator:
    """A connection's speculation, if any, and whether one of the current utterance was discarded."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.current: Speculation | None = None
        self.missed = False  # a speculation of the current utterance was discarded

    def start(
        self, turn: Turn, target: Outbox, run: Callable[[HeldOutbox], Coroutine[Any, Any, None]]
    ) -> None:
        """Run ``turn`` now, its output held (``run`` runs it into the outbox it is given)."""
        outbox = HeldOutbox(target)
        turn.task = asyncio.create_task(run(outbox), name=f"turn-{turn.id}-spec")
        self.current = Speculation(turn, outbox)

    def take(self, after_pause: bool) -> Speculation | None:
        """An end of turn: the speculation to commit if it was on this audio (paused), else it is dropped."""
        speculation, self.current = self.current, None
        if speculation is None:
            return None
        if not after_pause:
            speculation.discard("discarded")
            self.missed = True
            return None
        return speculation

    def drop(self, outcome: Literal["discarded", "aborted"]) -> bool:
        speculation, self.current = self.current, None
        if speculation is None:
            return False
        speculation.discard(outcome)
        log.debug("speculation dropped", extra={"session_id": self.session_id, "outcome": outcome})
        return True
