"""Helpers for driving the browser client from tests (fixtures live in tests/browser/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM = Path(os.environ.get("VOICECHAT_CHROMIUM", "/usr/bin/chromium"))
# Point the browser tests at a running deployment instead of starting the local stack.
URL_ENV = "VOICECHAT_TEST_SESSION_URL"

BASE_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageLog:
    """What a page reported besides its DOM: uncaught errors, console errors, control frames both ways."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    sent: list[dict[str, object]] = field(default_factory=list)
    received: list[dict[str, object]] = field(default_factory=list)
    binary_sent: int = 0
    sockets: list[str] = field(default_factory=list)  # URL of every WebSocket the page opened

    def unexpected_errors(self) -> list[str]:
        # A favicon 404 is the only console error a healthy page may log (and ours inlines its icon).
        console = [e for e in self.console_errors if "favicon.ico" not in e]
        return self.page_errors + console

    def sent_of_type(self, kind: str) -> list[dict[str, object]]:
        return [m for m in self.sent if m.get("type") == kind]

    def received_of_type(self, kind: str) -> list[dict[str, object]]:
        return [m for m in self.received if m.get("type") == kind]


def json_or_none(payload: str | bytes) -> dict[str, object] | None:
    if isinstance(payload, bytes):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def publish_screenshot(source: Path, repo_root: Path) -> None:
    """Refresh docs/screenshot.png (the README's picture) when asked to: VOICECHAT_UPDATE_SCREENSHOT=1."""
    if os.environ.get("VOICECHAT_UPDATE_SCREENSHOT") == "1":
        target = repo_root / "docs" / "screenshot.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)


STATIC_DIR = Path(__file__).resolve().parents[2] / "services" / "session" / "voicechat_session" / "static"


class _StaticHandler(SimpleHTTPRequestHandler):
    """The page's files as the session service serves them, plus extra response headers and /api/info."""

    headers_to_add: dict[str, str] = {}
    info: dict[str, object] = {}

    def end_headers(self) -> None:
        for name, value in self.headers_to_add.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/api/info":
            body = json.dumps(self.info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass  # test output stays readable; failures show up in the page's own errors


@contextmanager
def static_site(headers: dict[str, str], info: dict[str, object]) -> Iterator[str]:
    """Serve the browser client's static files on loopback (a secure context), without the session service.

    For page tests that script the server side themselves (Playwright's WebSocket routing): no models.
    Yields the base URL, ``http://127.0.0.1:PORT``.
    """
    handler = type("Handler", (_StaticHandler,), {"headers_to_add": headers, "info": info})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(STATIC_DIR)))
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
