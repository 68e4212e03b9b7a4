"""The real page in headless Chromium against a session service that requires access tokens.

The service process runs on fake backends with a fake LLM (no weights). The app's backend is played by a
Playwright route on the page's own origin (``auth_token_url``), as a real deployment's backend would answer:
the page asks it for a token before every socket and sends the token as a WebSocket subprotocol, never in the
URL; a refused token request or a token the service does not accept is a clear error, and no session opens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.support.browser import PageLog
from tests.support.fake_llm import FakeLLM
from tests.support.fake_service import base_url, running_fake_session
from voicechat_common.localstack import ManagedProcess
from voicechat_session.auth import mint_token

pytestmark = pytest.mark.browser

OpenPage = Callable[..., tuple[Page, PageLog]]
KEY = "browser-test-auth-key-0123456789abcdef"
TOKEN_PATH = "/app/voice-token"
REPLY = "Hello, authenticated user."


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(reply=REPLY)


@pytest.fixture
def pod(llm: FakeLLM, tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_fake_session(llm, tmp_path, "auth", auth_key=KEY, auth_token_url=TOKEN_PATH) as process:
        yield process


def backend(key: str, requests: list[str], status: int = 200) -> Callable[[Route], None]:
    """The application's token endpoint: a fresh token per request, signed with ``key``."""

    def answer(route: Route) -> None:
        requests.append(route.request.url)
        if status != 200:
            route.fulfill(status=status, content_type="application/json", body='{"error": "no session"}')
            return
        token = mint_token(key.encode(), f"user-{len(requests)}", ttl_s=120)
        route.fulfill(status=200, content_type="application/json", body=json.dumps({"token": token}))

    return answer


def open_with_backend(
    open_page: OpenPage, pod: ManagedProcess, handler: Callable[[Route], None]
) -> tuple[Page, PageLog]:
    # Route before the page loads: the page asks for its first token as soon as it starts.
    page, log = open_page("about:blank")
    page.route(f"**{TOKEN_PATH}", handler)
    page.goto(f"{base_url(pod)}/")
    return page, log


def wait_until(page: Page, expression: str, timeout_s: float = 20) -> None:
    page.wait_for_function(f"() => ({expression})", timeout=timeout_s * 1000, polling=100)


def test_page_gets_a_token_from_the_app_backend_and_talks(
    open_page: OpenPage, pod: ManagedProcess, llm: FakeLLM
) -> None:
    requests: list[str] = []
    page, log = open_with_backend(open_page, pod, backend(KEY, requests))
    wait_until(page, "window.voicechat.state === 'connected'")
    page.get_by_label("Message").fill("Hello?")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".msg.assistant .body")).to_have_text(REPLY)
    assert len(requests) == 1
    # The token never travels in a URL (proxies log URLs).
    assert log.sockets, "the page opened no WebSocket"
    assert all("token" not in url and "?" not in url for url in log.sockets), log.sockets
    assert not log.unexpected_errors()
    assert len(llm.requests) == 1


def test_a_refused_token_request_is_a_clear_error_and_no_session(
    open_page: OpenPage, pod: ManagedProcess, llm: FakeLLM
) -> None:
    requests: list[str] = []
    page, _ = open_with_backend(open_page, pod, backend(KEY, requests, status=403))
    wait_until(page, "window.voicechat.errors.length > 0")
    expect(page.get_by_role("alert")).to_contain_text("access token")
    assert page.evaluate("window.voicechat.state") != "connected"
    assert requests
    assert not llm.requests


def test_a_token_the_service_does_not_accept_is_refused(
    open_page: OpenPage, pod: ManagedProcess, llm: FakeLLM
) -> None:
    requests: list[str] = []
    page, _ = open_with_backend(open_page, pod, backend("another-key-that-is-long-enough-000000", requests))
    wait_until(page, "window.voicechat.errors.some((e) => e.code === 'unauthorized')")
    expect(page.get_by_role("alert")).to_contain_text("could not prove it may start a session")
    assert page.evaluate("window.voicechat.state") != "connected"
    assert not llm.requests
