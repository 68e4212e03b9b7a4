"""Restart mode's accounting (no processes): history continuity, the report, the summary, the CLI's options."""

from __future__ import annotations

import pytest

from voicechat_loadtest.cli import _restart_config, build_parser
from voicechat_loadtest.client import ConnectSample
from voicechat_loadtest.restart import (
    Conversation,
    Restart,
    RestartConfig,
    build_report,
    format_summary,
    history_gaps,
)
from voicechat_session.protocol import HistoryEntry, ResumedMessage


def _resumed(*users: str) -> ResumedMessage:
    messages: list[HistoryEntry] = []
    for text in users:
        messages += [HistoryEntry(role="user", content=text), HistoryEntry(role="assistant", content="ok")]
    return ResumedMessage(resumed=True, session_id="s", messages=messages)


def test_history_gaps_finds_missing_turns_in_order() -> None:
    completed = ["What is the capital of France?", "How far is the moon?"]
    assert history_gaps(completed, _resumed(*completed)) == []
    assert history_gaps(completed, _resumed(completed[1])) == [completed[0]]
    assert history_gaps(completed, _resumed(completed[1], completed[0])) == [completed[1]]  # order matters
    # Two user messages merged by the server (no reply in between) still hold both.
    assert history_gaps(completed, _resumed("\n".join(completed))) == []
    assert history_gaps([], _resumed()) == []


def test_report_counts_and_summary() -> None:
    config = RestartConfig(users=2, turns=3, sessions=2, restart_every_s=5)
    ok = Conversation(user=0, turns_ok=3, connections=2, resumes_ok=1)
    hurt = Conversation(
        user=1,
        turns_ok=1,
        turns_lost=1,
        turn_errors={"llm_timeout": 1},
        connections=3,
        resumes_ok=1,
        resume_failures={"expired": 1},
    )
    report = build_report(
        started_at="2026-01-01T00:00:00+00:00",
        wall_s=42.04,
        config=config,
        restarts=[Restart(at_s=5.0, session=0, signal="SIGTERM", down_s=1.0, back_s=4.0)],
        conversations=[hurt, ok],
        connects=[
            ConnectSample(user=1, at_s=5.1, error="connect_refused"),
            ConnectSample(user=1, at_s=5.2, session_id="x"),
        ],
    )
    assert ok.continued
    assert not hurt.continued
    assert report.conversations_continued == 1
    assert report.reconnects == 3
    assert report.sessions_resumed == 2
    assert report.resume_failures == {"expired": 1}
    assert report.turns_total == 6
    assert (report.turns_ok, report.turns_lost) == (4, 1)
    assert report.turn_errors == {"llm_timeout": 1}
    assert report.connect_refusals == {"connect_refused": 1}
    assert [c.user for c in report.conversations] == [0, 1]
    text = format_summary(report)
    assert "1 x SIGTERM (drain)" in text
    assert "continued with their history: 1/2" in text
    assert "sessions resumed: 2 of 3 reconnects; resume failures: {'expired': 1}" in text
    assert "completed 4, lost 1" in text


def test_gave_up_or_history_gaps_mean_not_continued() -> None:
    assert not Conversation(user=0, gave_up=True).continued
    assert not Conversation(user=0, history_mismatches=["hello"]).continued


def test_cli_options() -> None:
    args = build_parser().parse_args(
        [
            "restart",
            "--users",
            "3",
            "--restart-every",
            "7.5",
            "--kill",
            "--session-env",
            "A=b=c",
            "--llm-url",
            "x",
        ]
    )
    config = _restart_config(args)
    assert (config.users, config.restart_every_s, config.kill) == (3, 7.5, True)
    assert config.session_env == {"A": "b=c"}
    assert config.llm_url == "x"
    with pytest.raises(ValueError, match="NAME=VALUE"):
        _restart_config(build_parser().parse_args(["restart", "--session-env", "novalue"]))
