"""The connection's bounded outbound queue: server messages and instructions to its sender loop.

Everything queued counts against ``max_output_bytes``; a client that stops reading cannot make the server
hold its output without limit (the connection aborts on overflow).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pydantic import BaseModel

from voicechat_session.turn import Turn


@dataclass(frozen=True)
class AudioOut:
    turn: Turn
    clause: int
    data: bytes


@dataclass(frozen=True)
class TurnEnd:
    turn: Turn


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Text:
    """A server message, serialized when queued (so its size counts against ``max_output_bytes``)."""

    json: str


@dataclass(frozen=True)
class History:
    """Send the history as it is when the sender gets here (repeated requests coalesce into one)."""


@dataclass(frozen=True)
class ResumeToken:
    """Seal the conversation when the sender gets here: after every reply queued before is in the history."""


INSTRUCTION_BYTES = 64

Outgoing = BaseModel | AudioOut | TurnEnd | Close | Text | History | ResumeToken
"""A server message, or an instruction to the sender loop."""


def size(item: Outgoing) -> int:
    if isinstance(item, Text):
        return len(item.json)
    if isinstance(item, AudioOut):
        return len(item.data)
    if isinstance(item, Close):
        return 0  # queued directly by close(), outside the bound
    # Instructions (turn end, history, resume token) count too: a client that never reads cannot make
    # the server queue them without limit.
    return INSTRUCTION_BYTES


class BoundedQueue:
    """The queue and the count of its bytes; :meth:`put` says False when the bound would be passed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue()

    def put(self, item: Outgoing) -> bool:
        n = size(item)
        if self.queued_bytes + n > self.max_bytes:
            return False
        self.queued_bytes += n
        self._queue.put_nowait(item)
        return True

    def put_unbounded(self, item: Close) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> Outgoing:
        item = await self._queue.get()
        self.queued_bytes -= size(item)
        return item

    def clear(self) -> None:
        """Drop everything queued (an abort: the memory is the point)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self.queued_bytes = 0
