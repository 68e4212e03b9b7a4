"""The one OpenAI stream (SSE) parser, shared by the LLM warm-up and the session's LLM client."""

from __future__ import annotations

import pytest

from voicechat_common.openai_stream import StreamFormatError, chunk_content, chunk_error, parse_sse_data


def test_sse_parsing() -> None:
    chunk = parse_sse_data('data: {"choices":[{"delta":{"content":"Hel"}}]}')
    assert chunk is not None
    assert chunk_content(chunk) == "Hel"
    assert chunk_error(chunk) is None
    assert parse_sse_data("data: [DONE]") is None
    assert parse_sse_data(": ping") is None
    assert parse_sse_data("data:") is None
    assert chunk_content({"choices": [], "usage": {"completion_tokens": 3}}) == ""
    assert chunk_content({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert chunk_error({"error": {"message": "boom"}}) == "{'message': 'boom'}"
    with pytest.raises(StreamFormatError, match="malformed"):
        parse_sse_data("data: {not json")
    with pytest.raises(StreamFormatError, match="unexpected"):
        parse_sse_data("data: [1, 2]")
