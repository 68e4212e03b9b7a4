"""The page's side of resumable sessions, against a scripted server that issues and honours resume tokens.

The page keeps the newest token for its tab, sends it in ``start`` on every new connection, shows the restored
conversation after a reload, reconnects at once after a "going away" close, and forgets the token on reset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.test_page import (
    REPLY,
    OpenPage,
    ScriptedServer,
    no_violations,
    open_scripted,
    site,  # noqa: F401 (fixture)
    state,
    wait_until,
)
from voicechat_session.protocol import (
    CloseCode,
    HistoryEntry,
    ResumedMessage,
    ResumeTokenMessage,
    StartedMessage,
    client_message_adapter,
)

pytestmark = pytest.mark.browser


@dataclass
class ResumingServer(ScriptedServer):
    """A scripted pod that seals nothing: tokens are keys of a table of conversations it keeps."""

    conversations: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    routes: list[WebSocketRoute] = field(default_factory=list)
    issued: int = 0
    refuse: bool = False
    """Answer every token as expired."""

    def __call__(self, route: WebSocketRoute) -> None:
        self.routes.append(route)
        self.history = []
        super().__call__(route)

    def token(self) -> str:
        self.issued += 1
        token = f"v1.test.{self.issued}"
        self.conversations[token] = list(self.history)
        return token

    def send_token(self, route: WebSocketRoute) -> None:
        route.send(ResumeTokenMessage(token=self.token(), expires_in_s=1800).model_dump_json())

    def on_message(self, route: WebSocketRoute, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.binary_frames += 1
            return
        data = json.loads(message)
        parsed = client_message_adapter.validate_python(data)
        if parsed.type == "start" and parsed.resume_token is not None:
            self.received.append(data)
            restored = None if self.refuse else self.conversations.get(parsed.resume_token)
            if restored is None:
                answer = ResumedMessage(
                    resumed=False, session_id="fresh", error="expired", message="the token is too old"
                )
            else:
                self.history = list(restored)
                answer = ResumedMessage(resumed=True, session_id="0123456789abcdef", messages=restored)
            route.send(answer.model_dump_json())
            route.send(StartedMessage(sample_rate=16_000, voice="af_heart", speed=1.0).model_dump_json())
            self.send_token(route)
            return
        super().on_message(route, message)
        if parsed.type == "text":
            self.history += [
                HistoryEntry(role="user", content=parsed.text),
                HistoryEntry(role="assistant", content=REPLY),
            ]
            self.send_token(route)
        elif parsed.type == "reset":
            self.history = []
            self.send_token(route)

    def going_away(self) -> None:
        """Drain: hand over the latest token, close with 1001."""
        route = self.routes[-1]
        self.send_token(route)
        route.close(code=CloseCode.GOING_AWAY, reason="server shutting down")


def starts(server: ScriptedServer) -> list[dict[str, Any]]:
    return [m for m in server.received if m["type"] == "start"]


def say(page: Page, text: str, turns: int) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")
    wait_until(page, f"window.voicechat.turnMetrics.length === {turns}", f"turn {turns} finished")


def stored_token(page: Page) -> str | None:
    value: str | None = page.evaluate("sessionStorage.getItem('voicechat.resumeToken')")
    return value


def test_going_away_reconnects_at_once_and_resumes(open_page: OpenPage, site: str) -> None:  # noqa: F811
    server = ResumingServer()
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    say(page, "My name is Ada.", 1)
    latest = f"v1.test.{server.issued}"
    assert stored_token(page) == latest

    server.going_away()
    handed_over = f"v1.test.{server.issued}"
    # At once: no countdown (the backoff would show one for at least a second).
    wait_until(page, "window.voicechat.resumeOutcomes.length === 1", "resumed", timeout_s=3)
    s = state(page)
    assert s["reconnectInSeconds"] is None
    assert s["resumeOutcomes"] == ["ok"]
    assert len(server.routes) == 2
    resumed_start = starts(server)[-1]
    assert resumed_start["resume_token"] == handed_over
    # No voice or speed of the person's own: the conversation's restored ones apply.
    assert "voice" not in resumed_start
    assert "speed" not in resumed_start
    expect(page.locator(".note").last).to_have_text("Reconnected: the conversation continues.")
    expect(page.locator(".msg.user .body").first).to_have_text("My name is Ada.")

    # Turns of the new connection are numbered from 1 again and get their own bubbles.
    say(page, "What is my name?", 2)
    expect(page.locator(".msg.user .body")).to_have_text(["My name is Ada.", "What is my name?"])
    no_violations(page, log)


def test_reload_shows_the_earlier_conversation(open_page: OpenPage, site: str) -> None:  # noqa: F811
    server = ResumingServer()
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    say(page, "My name is Ada.", 1)
    page.reload()
    wait_until(page, "window.voicechat && window.voicechat.resumeOutcomes.length === 1", "resumed")
    expect(page.locator(".turn.earlier .msg.user .body")).to_have_text("My name is Ada.")
    expect(page.locator(".turn.earlier .msg.assistant .body")).to_have_text(REPLY)
    assert state(page)["restoredMessages"][0] == {"role": "user", "content": "My name is Ada."}
    no_violations(page, log)


def test_reset_forgets_the_conversation(open_page: OpenPage, site: str) -> None:  # noqa: F811
    server = ResumingServer()
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    say(page, "My name is Ada.", 1)
    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".note")).to_have_text("Conversation history cleared.")
    token = stored_token(page)
    assert token is not None
    assert server.conversations[token] == []  # the empty conversation's token, not Ada's
    page.reload()
    wait_until(page, "window.voicechat && window.voicechat.resumeOutcomes.length === 1", "resumed")
    expect(page.locator(".turn")).to_have_count(0)
    no_violations(page, log)


def test_a_refused_token_starts_fresh_and_says_why(open_page: OpenPage, site: str) -> None:  # noqa: F811
    server = ResumingServer()
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    say(page, "My name is Ada.", 1)
    server.refuse = True  # as if every token had expired
    server.going_away()
    wait_until(page, "window.voicechat.resumeOutcomes.length === 1", "resume answered")
    assert state(page)["resumeOutcomes"] == ["expired"]
    expect(page.locator(".note").last).to_contain_text("Started a new conversation")
    # The refused token is gone; the next one the server sends is kept.
    wait_until(page, "sessionStorage.getItem('voicechat.resumeToken') !== null", "new token kept")
    assert stored_token(page) == f"v1.test.{server.issued}"
    no_violations(page, log)
