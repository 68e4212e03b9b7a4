"""Static checks of the browser client's files against the protocol (no browser needed)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from voicechat_session.protocol import ErrorCode, ServerMessage

STATIC = Path(__file__).resolve().parents[2] / "services" / "session" / "voicechat_session" / "static"


def _object_keys(source: str, name: str) -> set[str]:
    """Keys of a top-level ``const NAME = { key: ..., }`` object literal in app.js."""
    start = source.index(f"const {name} = {{")
    body = source[start : source.index("\n};", start)]
    return set(re.findall(r"^  (\w+)[:(]", body, re.MULTILINE))


def test_every_error_code_has_words_for_people() -> None:
    app = (STATIC / "app.js").read_text()
    assert _object_keys(app, "ERROR_TEXT") == set(typing.get_args(ErrorCode))


def test_every_server_message_type_has_a_handler_or_is_deliberately_ignored() -> None:
    app = (STATIC / "app.js").read_text()
    members = typing.get_args(typing.get_args(ServerMessage)[0])
    types = {member.model_fields["type"].default for member in members}
    # `history` answers `get_history`, which the page never sends.
    assert _object_keys(app, "HANDLERS") == types - {"history"}


def test_page_references_only_files_that_exist() -> None:
    html = (STATIC / "index.html").read_text()
    app = (STATIC / "app.js").read_text()
    referenced = set(re.findall(r'(?:href|src)="([\w./-]+\.(?:js|css))"', html))
    referenced |= set(re.findall(r'new URL\("([\w-]+\.js)", import\.meta\.url\)', app))
    for worklet in ("capture-worklet.js", "playback-worklet.js"):
        referenced |= set(re.findall(r'from "\./([\w-]+\.js)"', (STATIC / worklet).read_text()))
    assert referenced >= {"app.js", "style.css", "capture-worklet.js", "playback-worklet.js", "resampler.js"}
    for name in referenced:
        assert (STATIC / name).is_file(), name
