from __future__ import annotations

from voicechat_session.history import ConversationHistory


def test_system_prompt_stays_and_oldest_turns_go_first() -> None:
    history = ConversationHistory(system_prompt="Be brief.", max_messages=5, max_chars=10_000)
    for i in range(4):
        history.add("user", f"question {i}")
        history.add("assistant", f"answer {i}")
    messages = history.messages()
    assert messages[0].role == "system"
    assert messages[0].content == "Be brief."
    assert len(messages) <= 5
    assert messages[-1].content == "answer 3"
    assert messages[1].role == "user", "the conversation opens with a user turn"
    assert "question 0" not in [m.content for m in messages]


def test_character_budget_keeps_the_newest_message() -> None:
    history = ConversationHistory(system_prompt="S", max_messages=50, max_chars=200)
    history.add("user", "a" * 150)
    history.add("assistant", "b" * 30)
    history.add("user", "c" * 300)  # alone over budget: kept, cut to the budget
    assert [m.content[0] for m in history.messages()] == ["S", "c"]
    assert len(history.turns[-1].content) == 200


def test_merged_user_turns_stay_within_the_budget() -> None:
    """Issue 13: 60 superseded texts made one 119,089-character message; now the newest words, in budget."""
    history = ConversationHistory(system_prompt="S", max_messages=24, max_chars=8000)
    for i in range(60):
        history.add("user", f"{i:02d} " + "x" * 1990)
    (only,) = history.turns
    assert len(only.content) <= 8000
    assert only.content.rstrip().endswith("x")
    assert "59 " in only.content
    assert "00 " not in only.content


def test_consecutive_user_turns_are_merged() -> None:
    history = ConversationHistory(system_prompt="S", max_messages=10, max_chars=1000)
    history.add("user", "Are you there?")
    history.add("assistant", "")  # an interrupted reply with nothing spoken adds nothing
    history.add("user", "Hello?")
    assert [(m.role, m.content) for m in history.messages()[1:]] == [("user", "Are you there?\nHello?")]
    history.clear()
    assert [m.role for m in history.messages()] == ["system"]
