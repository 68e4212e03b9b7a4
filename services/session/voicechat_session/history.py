"""A connection's conversation history with a budget: the system prompt stays, the oldest turns go first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def as_openai(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class ConversationHistory:
    system_prompt: str
    max_messages: int
    """Budget in messages, the system prompt included."""
    max_chars: int
    """Budget in characters over all messages, the system prompt excluded (it is always sent)."""
    turns: list[ChatMessage] = field(default_factory=list)

    def add(self, role: Literal["user", "assistant"], content: str) -> None:
        content = content.strip()
        if not content:
            return
        # Two user turns in a row (the assistant was interrupted before saying anything) are merged: many
        # chat templates insist on alternating roles.
        if self.turns and self.turns[-1].role == role:
            content = f"{self.turns[-1].content}\n{content}"
        # No message exceeds the budget: a merged run of user turns keeps its newest words (what the user
        # said last), so superseded turns cannot grow one message without bound.
        if len(content) > self.max_chars:
            content = content[-self.max_chars :].lstrip()
        if self.turns and self.turns[-1].role == role:
            self.turns[-1] = ChatMessage(role, content)
        else:
            self.turns.append(ChatMessage(role, content))
        self._enforce_budget()

    def clear(self) -> None:
        self.turns.clear()

    def messages(self) -> list[ChatMessage]:
        return [ChatMessage("system", self.system_prompt), *self.turns]

    def _enforce_budget(self) -> None:
        def over() -> bool:
            chars = sum(len(m.content) for m in self.turns)
            return len(self.turns) + 1 > self.max_messages or chars > self.max_chars

        # The newest message always stays (it fits: see add).
        while len(self.turns) > 1 and over():
            self.turns.pop(0)
        # A conversation opens with the user (chat templates expect it).
        while len(self.turns) > 1 and self.turns[0].role == "assistant":
            self.turns.pop(0)
