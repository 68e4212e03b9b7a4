"""Fixtures: real headless Chromium (Debian's package) driven by Playwright, with a fake microphone.

Playwright never downloads browsers here (``executable_path`` points at /usr/bin/chromium); the fake capture
file starts when the page opens the microphone and ``%noloop`` plays it once, then silence; pages are started
by clicking, as a person would, so autoplay bugs are not hidden.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
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

from tests.support.browser import BASE_ARGS, CHROMIUM, URL_ENV, PageLog, json_or_none


@pytest.fixture(scope="session")
def session_url(request: pytest.FixtureRequest) -> str:
    """Base URL of the session service that serves the page: the real local stack unless overridden."""
    override = os.environ.get(URL_ENV)
    if override:
        return override.rstrip("/")
    stack = request.getfixturevalue("stack")
    return str(stack.session_url)


# Package scope, not session: Playwright's sync API keeps an event loop running on the main thread while it
# is open, and every asyncio test collected after the browser tests would then fail to start its own loop.
@pytest.fixture(scope="package")
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
            log.sockets.append(ws.url)

            def sent(payload: str | bytes) -> None:
                if isinstance(payload, bytes):
                    log.binary_sent += 1
                elif (value := json_or_none(payload)) is not None:
                    log.sent.append(value)

            def received(payload: str | bytes) -> None:
                if (value := json_or_none(payload)) is not None:
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
