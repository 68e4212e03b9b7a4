"""Static checks of the browser client's files against the protocol (no browser needed)."""

from __future__ import annotations

import re
import typing
from html.parser import HTMLParser

from tests.support.browser import STATIC_DIR
from voicechat_session.protocol import (
    OUTPUT_SAMPLE_RATE,
    PROTOCOL_VERSION,
    ClientMessage,
    CloseCode,
    ErrorCode,
    ResumeFailureCode,
    ServerMessage,
    StartMessage,
)

STATIC = STATIC_DIR
WORKLETS = ("capture-worklet.js", "playback-worklet.js")


def _js(name: str) -> str:
    return (STATIC / name).read_text()


def _block(source: str, opening: str) -> str:
    """The text of a top-level object or list literal that starts with ``opening``."""
    start = source.index(opening)
    # Objects end at a `}` in column 0 (inner ones are indented); lists hold only strings, so the first `]`.
    closer = "\n}" if opening.rstrip().endswith("{") else "]"
    return source[start : source.index(closer, start)]


def _object_keys(source: str, opening: str) -> set[str]:
    """Keys of a top-level object literal: ``key: ...`` or ``key(...) {`` at two spaces of indent."""
    return set(re.findall(r"^  (\w+)[:(]", _block(source, opening), re.MULTILINE))


def _string_list(source: str, name: str) -> list[str]:
    return re.findall(r'"(\w+)"', _block(source, f"export const {name} = ["))


def _types(union: object) -> set[str]:
    members = typing.get_args(typing.get_args(union)[0])
    return {member.model_fields["type"].default for member in members}


def _js_number(source: str, name: str) -> int:
    match = re.search(rf"^export const {name} = (\d+);", source, re.MULTILINE)
    assert match, name
    return int(match.group(1))


def test_protocol_module_mirrors_protocol_py() -> None:
    protocol = _js("protocol.js")
    assert set(_string_list(protocol, "SERVER_MESSAGE_TYPES")) == _types(ServerMessage)
    assert set(_string_list(protocol, "CLIENT_MESSAGE_TYPES")) == _types(ClientMessage)
    assert _js_number(protocol, "PROTOCOL_VERSION") == PROTOCOL_VERSION
    assert _js_number(protocol, "OUTPUT_SAMPLE_RATE") == OUTPUT_SAMPLE_RATE
    assert (
        _js_number(protocol, "DEFAULT_INPUT_SAMPLE_RATE") == StartMessage.model_fields["sample_rate"].default
    )
    close_codes = dict(re.findall(r"^  (\w+): (\d+),", _block(protocol, "export const CLOSE_CODE = {"), re.M))
    expected = {name: value for name, value in vars(CloseCode).items() if name.isupper()}
    assert {name: int(value) for name, value in close_codes.items()} == expected
    # Client messages are built in one place, each a member of ClientMessage.
    builders = _object_keys(protocol, "export const clientMessage = {")
    assert builders <= _types(ClientMessage)
    assert builders >= {"start", "text", "interrupt", "reset", "configure"}


def test_every_error_code_has_words_for_people() -> None:
    assert _object_keys(_js("protocol.js"), "export const ERROR_TEXT = {") == set(typing.get_args(ErrorCode))


def test_every_resume_failure_has_words_for_people() -> None:
    keys = _object_keys(_js("protocol.js"), "export const RESUME_FAILURE_TEXT = {")
    assert keys == set(typing.get_args(ResumeFailureCode))


def test_every_server_message_type_has_a_handler_or_is_deliberately_ignored() -> None:
    # `history` answers `get_history`, which the page never sends.
    assert _object_keys(_js("main.js"), "const HANDLERS = {") == _types(ServerMessage) - {"history"}


def test_message_vocabulary_lives_only_in_the_protocol_module() -> None:
    """Other modules build and name messages through protocol.js, never with literal ``type:`` objects."""
    for path in STATIC.glob("*.js"):
        if path.name in ("protocol.js", *WORKLETS):
            continue  # the worklets' port messages are page-internal, not protocol
        literals = re.findall(r'\{\s*type:\s*"(\w+)"', path.read_text())
        assert not set(literals) & (_types(ClientMessage) | _types(ServerMessage)), (path.name, literals)


def _imports(name: str) -> set[str]:
    source = _js(name)
    found = set(re.findall(r'^import [^;]*? from "\./([\w-]+\.js)";', source, re.MULTILINE | re.DOTALL))
    found |= set(re.findall(r'new URL\("([\w-]+\.js)", import\.meta\.url\)', source))
    return found


def test_page_references_only_files_that_exist_and_every_module_is_used() -> None:
    html = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:href|src)="([\w./-]+\.(?:js|css|svg))"', html))
    queue = [name for name in referenced if name.endswith(".js")]
    while queue:
        name = queue.pop()
        assert (STATIC / name).is_file(), name
        for imported in _imports(name) - referenced:
            referenced.add(imported)
            queue.append(imported)
    for name in referenced:
        assert (STATIC / name).is_file(), name
    assert referenced >= {"main.js", "protocol.js", "style.css", *WORKLETS, "resampler.js", "favicon.svg"}
    unused = {path.name for path in STATIC.glob("*.js")} - referenced
    assert not unused, f"modules nothing imports: {unused}"


def test_every_page_module_is_preloaded() -> None:
    """main.js's import graph is fetched at once (modulepreload); worklet modules load into the audio thread."""
    html = (STATIC / "index.html").read_text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="([\w-]+\.js)"', html))
    graph: set[str] = set()
    queue = ["main.js"]
    while queue:
        for imported in {i for i in _imports(queue.pop()) if i not in WORKLETS} - graph:
            graph.add(imported)
            queue.append(imported)
    assert preloaded == graph


class _InlineFinder(HTMLParser):
    """What a Content-Security-Policy of ``default-src 'self'`` would block in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=…> (inline event handler)")
            if name == "style":
                self.found.append(f"<{tag} style=…> (inline style)")
            if (
                name in ("href", "src", "action")
                and value
                and re.match(r"\s*(javascript|data):", value, re.I)
            ):
                self.found.append(f"<{tag} {name}={value[:30]}…> (inline URL)")
        if tag == "script" and "src" not in values:
            self.found.append("<script> without src (inline script)")
        if tag == "style":
            self.found.append("<style> element (inline style)")


def test_page_has_nothing_inline_that_a_strict_csp_blocks() -> None:
    finder = _InlineFinder()
    finder.feed((STATIC / "index.html").read_text())
    assert finder.found == []
    # Scripts may only create elements, never inject markup or evaluate strings.
    for path in STATIC.glob("*.js"):
        source = path.read_text()
        blocked = (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "new Function",
            'setAttribute("style"',
        )
        for construct in blocked:
            assert construct not in source, (path.name, construct)
