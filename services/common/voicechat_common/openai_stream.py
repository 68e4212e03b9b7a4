"""Reading an OpenAI-compatible streaming chat completion (Server-Sent Events), once for every client.

The LLM service's warm-up and the session service's LLM client both read these streams; each maps
:class:`StreamFormatError` to its own error type.
"""

from __future__ import annotations

import json
from typing import Any


class StreamFormatError(ValueError):
    """A ``data:`` line that is not a JSON object."""


def parse_sse_data(line: str) -> dict[str, Any] | None:
    """The JSON payload of one ``data:`` line; None for other lines (comments, keep-alives) and ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as err:
        raise StreamFormatError(f"malformed stream chunk: {payload[:80]!r}") from err
    if not isinstance(value, dict):
        raise StreamFormatError(f"unexpected stream chunk: {payload[:80]!r}")
    return value


def chunk_content(chunk: dict[str, Any]) -> str:
    """The content delta of a chunk ("" for role-only, usage-only and finish chunks)."""
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def chunk_error(chunk: dict[str, Any]) -> str | None:
    """The error a server reports inside the stream (vLLM, llama.cpp do), as text; None when there is none."""
    if "error" not in chunk:
        return None
    return str(chunk["error"])[:200]
