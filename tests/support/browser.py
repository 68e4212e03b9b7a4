"""Helpers for driving the browser client from tests (fixtures live in tests/browser/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
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
