"""docs/protocol.md documents every message type, error code and close code that protocol.py defines."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from voicechat_session import protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _union_types(union: object) -> list[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return [typing.get_args(m.model_fields["type"].annotation)[0] for m in members]


def _table_keys(heading: str) -> set[str]:
    """The backticked first cells of the table under ``heading``."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `?([\w]+)`? \|", section, flags=re.MULTILINE))


def test_every_client_message_is_documented() -> None:
    assert set(_union_types(protocol.ClientMessage)) <= _table_keys("Client → server")


def test_every_server_message_is_documented() -> None:
    assert set(_union_types(protocol.ServerMessage)) <= _table_keys("Server → client")


def test_every_error_code_is_documented() -> None:
    assert set(typing.get_args(protocol.ErrorCode)) <= _table_keys("Error codes")


def test_every_close_code_is_documented() -> None:
    codes = {str(v) for k, v in vars(protocol.CloseCode).items() if k.isupper()}
    assert codes <= _table_keys("Close codes")


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "start", "sample_rate": 16000, "voice": "jf_alpha", "speed": 1.2}',
        '{"type": "text", "text": "hello"}',
        '{"type": "interrupt"}',
        '{"type": "reset"}',
        '{"type": "configure", "speed": 0.8}',
        '{"type": "get_history"}',
    ],
)
def test_client_messages_parse(raw: str) -> None:
    message = protocol.client_message_adapter.validate_json(raw)
    assert message.type in raw


def test_server_messages_round_trip() -> None:
    messages = [
        protocol.InterruptedMessage(turn_id=3, reason="barge_in"),
        protocol.HistoryMessage(messages=[protocol.HistoryEntry(role="user", content="hi")]),
        protocol.TurnMetricsMessage(turn_id=1, source="voice", stt_ms=12.5),
    ]
    for message in messages:
        assert protocol.server_message_adapter.validate_json(message.model_dump_json()) == message


def test_extra_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        protocol.client_message_adapter.validate_json('{"type": "interrupt", "now": true}')
