"""A session's side of resumable conversations: seal the conversation, restore one on ``start``.

The token format, keys and checks live in :mod:`.resume`; this is what a connection does with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from voicechat_session import metrics
from voicechat_session.history import ConversationHistory
from voicechat_session.protocol import HistoryEntry, ResumedMessage, ResumeTokenMessage
from voicechat_session.resume import ResumeCodec, ResumeError, ResumeTurn, attempt

log = logging.getLogger(__name__)


def seal(
    codec: ResumeCodec, conversation_id: str, voice: str, speed: float, history: ConversationHistory
) -> ResumeTokenMessage:
    """The conversation as it stands (history, voice, speed), sealed for the client to keep."""
    turns = [ResumeTurn(role=m.role, content=m.content) for m in history.turns if m.role != "system"]
    token = codec.seal(session_id=conversation_id, voice=voice, speed=speed, history=turns)
    metrics.RESUME_TOKENS_ISSUED_TOTAL.inc()
    return ResumeTokenMessage(token=token, expires_in_s=codec.ttl_s)


@dataclass(frozen=True)
class Restored:
    """The answer to send, and what the session continues with (voice ``None``: keep its own)."""

    message: ResumedMessage
    conversation_id: str
    voice: str | None = None
    speed: float | None = None


def restore(
    codec: ResumeCodec,
    token: str,
    *,
    history: ConversationHistory,
    conversation_id: str,
    voices: list[str],
    started: bool,
    session_id: str,
) -> Restored:
    """Continue the conversation in ``token`` into ``history``, or say why not and go on fresh (never fatal)."""
    if started or history.turns:
        # Restoring now would put the old conversation after this one's turns.
        refused = ResumedMessage(
            resumed=False,
            session_id=conversation_id,
            error="invalid",
            message="a conversation can only be resumed before this session's first turn",
        )
        return Restored(refused, conversation_id)
    outcome = attempt(codec, token)
    if isinstance(outcome, ResumeError):
        failed = ResumedMessage(
            resumed=False,
            session_id=conversation_id,
            error=outcome.failure.value,
            message=outcome.detail,
        )
        return Restored(failed, conversation_id)
    state = outcome.state
    for turn in state.history:
        history.add(turn.role, turn.content)  # this pod's budget applies
    entries = [HistoryEntry(role=m.role, content=m.content) for m in history.turns]
    resumed = ResumedMessage(
        resumed=True,
        session_id=state.session_id,
        messages=entries,
        age_s=round(outcome.age_s, 1),
    )
    log.info(
        "session resumed",
        extra={
            "session_id": session_id,
            "conversation_id": state.session_id,
            "messages": len(entries),
            "token_age_s": round(outcome.age_s, 1),
        },
    )
    voice = state.voice if state.voice in voices else None
    return Restored(resumed, state.session_id, voice, state.speed)
