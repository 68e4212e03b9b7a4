"""The real page in headless Chromium against a real session service process that is restarted under it.

The process runs on fake backends with a recording fake LLM (no weights), so the test is about the page and
the service: after a SIGTERM (drain, 1001) and a restart on the same port, the page reconnects, resumes with
its token, still shows the earlier transcript, and the assistant's next LLM request holds the earlier turns.
A reload then shows the conversation again, restored from the token alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import PageLog
from tests.support.fake_llm import FakeLLM
from tests.support.fake_service import base_url, running_fake_session
from voicechat_common.localstack import ManagedProcess

pytestmark = pytest.mark.browser

OpenPage = Callable[..., tuple[Page, PageLog]]
KEY = "browser-test-resume-key-0123456789abcdef"
REPLY = "Nice to meet you, Ada."


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(reply=REPLY)


@pytest.fixture
def pod(llm: FakeLLM, tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_fake_session(llm, tmp_path, "browser", resume_key=KEY, drain_grace_s=10) as process:
        yield process


def wait_until(page: Page, expression: str, timeout_s: float = 20) -> None:
    page.wait_for_function(f"() => ({expression})", timeout=timeout_s * 1000, polling=100)


def say(page: Page, text: str, turns: int) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")
    wait_until(page, f"window.voicechat.turnMetrics.length === {turns}")


def test_page_resumes_after_a_server_restart(open_page: OpenPage, pod: ManagedProcess, llm: FakeLLM) -> None:
    page, log = open_page(f"{base_url(pod)}/")
    wait_until(page, "window.voicechat.state === 'connected'")
    say(page, "My name is Ada.", 1)
    expect(page.locator(".msg.assistant .body")).to_have_text(REPLY)
    wait_until(page, "sessionStorage.getItem('voicechat.resumeToken') !== null")
    first_conversation = page.evaluate("window.voicechat.sessionId")

    pod.stop()  # SIGTERM: the service drains, hands over the token and closes with 1001
    pod.start()  # the same port, a new process (as a replaced pod behind its Service)
    pod.wait_ready(60)

    wait_until(page, "window.voicechat.resumeOutcomes.length === 1", timeout_s=30)
    assert page.evaluate("window.voicechat.resumeOutcomes") == ["ok"]
    assert page.evaluate("window.voicechat.sessionId") == first_conversation
    expect(page.locator(".note").last).to_have_text("Reconnected: the conversation continues.")
    expect(page.locator(".msg.user .body").first).to_have_text("My name is Ada.")

    say(page, "What is my name?", 2)
    sent = llm.requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == ["My name is Ada.", REPLY, "What is my name?"]
    expect(page.locator(".msg.user .body")).to_have_text(["My name is Ada.", "What is my name?"])

    # A reload starts from an empty page: the conversation comes back from the token alone.
    page.reload()
    wait_until(page, "window.voicechat && window.voicechat.resumeOutcomes.length === 1")
    expect(page.locator(".turn.earlier .msg.user .body")).to_have_text(
        ["My name is Ada.", "What is my name?"]
    )
    expect(page.locator(".turn.earlier .msg.assistant .body").first).to_have_text(REPLY)
    expect(page.locator(".note").last).to_have_text(re.compile("earlier conversation continues"))
    # Chromium logs each refused connection attempt while the only process was down; nothing else.
    assert [e for e in log.unexpected_errors() if "ERR_CONNECTION_REFUSED" not in e] == []
