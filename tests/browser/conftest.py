"""Real headless Chromium (Debian's package) driven by Playwright, with a fake microphone playing a WAV.

Facts these fixtures rely on are measured in docs of the project (browser-testing notes): Playwright must not
download browsers (``executable_path`` points at /usr/bin/chromium); the fake capture file starts when the page
opens the microphone and ``%noloop`` plays it once, then silence; the page is started by clicking, as a person
would, so autoplay bugs are not hidden.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    ViewportSize,
    WebSocket,
    sync_playwright,
)

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


def _json_or_none(payload: str | bytes) -> dict[str, object] | None:
    if isinstance(payload, bytes):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.fixture(scope="session")
def session_url(request: pytest.FixtureRequest) -> str:
    """Base URL of the session service that serves the page: the real local stack unless overridden."""
    override = os.environ.get(URL_ENV)
    if override:
        return override.rstrip("/")
    stack = request.getfixturevalue("stack")
    return str(stack.session_url)


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system` (scripts/install-system.sh installs chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def launch(playwright_instance: Playwright) -> Iterator[Callable[[Path | None], Browser]]:
    """Start Chromium whose fake microphone plays ``wav`` once (then silence), or the default fake device."""
    browsers: list[Browser] = []

    def _launch(wav: Path | None = None) -> Browser:
        args = list(BASE_ARGS)
        if wav is not None:
            args.append(f"--use-file-for-fake-audio-capture={wav.resolve()}%noloop")
        browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        browsers.append(browser)
        return browser

    yield _launch
    for browser in browsers:
        browser.close()


@pytest.fixture
def browser_dir(artifacts_dir: Path, request: pytest.FixtureRequest) -> Path:
    directory = artifacts_dir / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"FAILED-{request.node.name}-*"):
        stale.unlink()  # from an earlier failed run of this test
    return directory


@pytest.fixture
def open_page(
    launch: Callable[[Path | None], Browser], browser_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., tuple[Page, PageLog]]]:
    """Open the client in a fresh browser; on a test failure its screenshot and state land in artifacts."""
    opened: list[tuple[Page, PageLog]] = []

    def _open(
        url: str, *, wav: Path | None = None, viewport: ViewportSize | None = None
    ) -> tuple[Page, PageLog]:
        browser = launch(wav)
        page = browser.new_page(viewport=viewport or {"width": 960, "height": 900})
        log = PageLog()
        page.on("pageerror", lambda err: log.page_errors.append(str(err)))

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                log.console_errors.append(f"{msg.text} ({msg.location.get('url', '')})")

        page.on("console", on_console)

        def on_websocket(ws: WebSocket) -> None:
            def sent(payload: str | bytes) -> None:
                if isinstance(payload, bytes):
                    log.binary_sent += 1
                elif (value := _json_or_none(payload)) is not None:
                    log.sent.append(value)

            def received(payload: str | bytes) -> None:
                if (value := _json_or_none(payload)) is not None:
                    log.received.append(value)

            ws.on("framesent", sent)
            ws.on("framereceived", received)

        page.on("websocket", on_websocket)
        page.goto(url)
        opened.append((page, log))
        return page, log

    yield _open

    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for index, (page, log) in enumerate(opened):
            stem = browser_dir / f"FAILED-{request.node.name}-{index}"
            try:
                page.screenshot(path=str(stem.with_suffix(".png")), full_page=True)
                state = page.evaluate("JSON.stringify(window.voicechat, null, 1)")
            except Error as err:
                state = f"(page unavailable: {err})"
            stem.with_suffix(".txt").write_text(
                f"state:\n{state}\n\nerrors: {log.unexpected_errors()}\n\nsent: {log.sent}\n\nreceived: "
                f"{log.received}\n"
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Lets fixtures see whether the test body failed (for failure artifacts).
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def publish_screenshot(source: Path, repo_root: Path) -> None:
    """Refresh docs/screenshot.png (the README's picture) when asked to: VOICECHAT_UPDATE_SCREENSHOT=1."""
    if os.environ.get("VOICECHAT_UPDATE_SCREENSHOT") == "1":
        target = repo_root / "docs" / "screenshot.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
