"""The browser client in a real headless Chromium against a scripted server: no models, no session service.

The page's static files come from a plain loopback HTTP server that can add response headers (a strict
Content-Security-Policy here); its WebSocket is answered by Playwright's WebSocket routing with protocol
messages built from the real pydantic models, and every message the page sends is validated by them.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.browser import PageLog, static_site
from voicechat_session.protocol import (
    OUTPUT_SAMPLE_RATE,
    AssistantMessage,
    AudioEndMessage,
    AudioStartMessage,
    HistoryClearedMessage,
    InterruptedMessage,
    ReadyMessage,
    StartedMessage,
    TurnMetricsMessage,
    client_message_adapter,
)

pytestmark = pytest.mark.browser

OpenPage = Callable[..., tuple[Page, PageLog]]

# What issue 13 asks the service to send; the page must work under it unchanged.
CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
VOICES = ["af_heart", "am_adam"]
INFO: dict[str, object] = {"voices": VOICES, "voice": "af_heart", "speed": 1.0}
REPLY = "Hello there, nice to meet you."
# Records CSP violations from the first moment (init scripts are exempt from the page's CSP).
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """PCM16 LE mono at the output rate: what the server's TTS sends."""
    count = int(OUTPUT_SAMPLE_RATE * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * freq * i / OUTPUT_SAMPLE_RATE)) for i in range(count))
    return struct.pack(f"<{count}h", *samples)


@dataclass
class ScriptedServer:
    """Answers the page's socket like a session pod would, with the protocol's own models."""

    urls: list[str] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    binary_frames: int = 0
    turn: int = 0
    reply_seconds: float = 0.6

    def __call__(self, route: WebSocketRoute) -> None:
        self.urls.append(route.url)
        route.on_message(lambda message: self.on_message(route, message))
        ready = ReadyMessage(
            session_id="0123456789abcdef",
            connect_ms=1.5,
            voices=VOICES,
            voice="af_heart",
            speed=1.0,
            sharing="pod",
        )
        route.send(ready.model_dump_json())

    def on_message(self, route: WebSocketRoute, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.binary_frames += 1
            return
        data = json.loads(message)
        self.received.append(data)
        parsed = client_message_adapter.validate_python(data)  # the page speaks the protocol exactly
        if parsed.type in ("start", "configure"):
            voice = getattr(parsed, "voice", None) or "af_heart"
            speed = getattr(parsed, "speed", None) or 1.0
            route.send(StartedMessage(sample_rate=16_000, voice=voice, speed=speed).model_dump_json())
        elif parsed.type == "text":
            self.reply(route)
        elif parsed.type == "interrupt":
            route.send(InterruptedMessage(turn_id=self.turn, reason="client").model_dump_json())
        elif parsed.type == "reset":
            route.send(HistoryClearedMessage().model_dump_json())

    def reply(self, route: WebSocketRoute) -> None:
        self.turn += 1
        turn = self.turn
        for word in REPLY.split(" "):
            route.send(AssistantMessage(text=word + " ", final=False, turn_id=turn).model_dump_json())
        route.send(AudioStartMessage(turn_id=turn).model_dump_json())
        audio = tone(self.reply_seconds)
        for offset in range(0, len(audio), 4800):  # 100 ms chunks, as the pacing sends them
            route.send(audio[offset : offset + 4800])
        route.send(AudioEndMessage(turn_id=turn).model_dump_json())
        route.send(AssistantMessage(text=REPLY, final=True, turn_id=turn).model_dump_json())
        metrics = TurnMetricsMessage(
            turn_id=turn,
            source="text",
            llm_ttft_ms=42.0,
            tts_first_chunk_ms=80.0,
            time_to_first_audio_ms=130.0,
        )
        route.send(metrics.model_dump_json())


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with static_site({"Content-Security-Policy": CSP}, INFO) as base:
        yield base


def open_scripted(open_page: OpenPage, url: str, server: ScriptedServer) -> tuple[Page, PageLog]:
    page, log = open_page("about:blank")
    page.add_init_script(CSP_PROBE)
    page.route_web_socket(re.compile(r".*"), server)
    page.goto(url)
    return page, log


def state(page: Page) -> dict[str, Any]:
    value = page.evaluate("JSON.stringify(window.voicechat)")
    parsed: dict[str, Any] = json.loads(value)
    return parsed


def wait_until(page: Page, expression: str, what: str, timeout_s: float = 15) -> None:
    try:
        # As a function: Playwright evaluates a bare expression with eval(), which the page's CSP refuses.
        page.wait_for_function(f"() => ({expression})", timeout=timeout_s * 1000, polling=50)
    except PlaywrightTimeout:
        pytest.fail(f"{what}: not within {timeout_s:.0f}s. Page state: {json.dumps(state(page))[:3000]}")


def no_violations(page: Page, log: PageLog) -> None:
    assert page.evaluate("window.__cspViolations") == []
    assert log.unexpected_errors() == []


def test_page_works_under_a_strict_csp(open_page: OpenPage, site: str, browser_dir: Path) -> None:
    server = ScriptedServer()
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat && window.voicechat.state === 'connected'", "page connected")
    expect(page.locator("#connection-text")).to_have_text("Connected")
    expect(page.locator("#session-info")).to_contain_text("Session 01234567")
    expect(page.locator("#voice option")).to_have_count(len(VOICES))
    assert server.urls == [f"{site.replace('http://', 'ws://')}/ws"]

    # The microphone (the fake device) streams PCM frames once `start` is acknowledged. It goes first: the
    # scripted server answers at once, and audio that arrives before the player's worklet loaded is dropped.
    page.get_by_role("button", name="Start the microphone").click()
    wait_until(page, "window.voicechat.framesSent > 5", "microphone frames sent")
    assert [m for m in server.received if m["type"] == "start"] == [
        {"type": "start", "sample_rate": 16_000, "voice": "af_heart", "speed": 1}
    ]
    assert server.binary_frames > 5
    # A typed turn: streamed words, then audio played through the worklet, then the turn's figures.
    box = page.get_by_label("Message")
    box.fill("Hi!")
    box.press("Enter")
    wait_until(page, "window.voicechat.turnMetrics.length === 1", "turn finished")
    wait_until(
        page,
        "window.voicechat.samplesPlayed > 0 && window.voicechat.activity === 'listening'",
        "audio played",
    )
    expect(page.locator(".msg.user .body")).to_have_text("Hi!")
    expect(page.locator(".msg.assistant .body")).to_have_text(REPLY)
    metrics = page.locator(".msg.assistant .metrics")
    expect(metrics).to_contain_text("LLM first token 42 ms")
    expect(metrics).to_contain_text("First audio 130 ms")
    s = state(page)
    assert s["samplesReceived"] == int(OUTPUT_SAMPLE_RATE * 0.6)
    assert s["playedPeak"] > 0.2
    assert s["audioFramesDropped"] == 0

    page.screenshot(path=str(browser_dir / "strict-csp.png"))

    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".note")).to_have_text("Conversation history cleared.")
    no_violations(page, log)


def test_interrupted_turn_plays_no_more_audio(open_page: OpenPage, site: str) -> None:
    server = ScriptedServer(reply_seconds=5.0)  # long enough to be playing still when Escape lands
    page, log = open_scripted(open_page, f"{site}/", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    page.get_by_role("button", name="Start the microphone").click()  # loads the player's worklet
    wait_until(page, "window.voicechat.framesSent > 0", "microphone on")
    page.get_by_label("Message").fill("Tell me a story.")
    page.get_by_label("Message").press("Enter")
    wait_until(page, "window.voicechat.playingTurn === 1", "reply playing")
    page.keyboard.press("Escape")
    wait_until(page, "window.voicechat.interruptedTurns.includes(1)", "turn interrupted")
    wait_until(page, "window.voicechat.bufferedSamples === 0 && window.voicechat.flushes >= 1", "flushed")
    assert [m["type"] for m in server.received] == ["start", "text", "interrupt"]
    expect(page.locator('.turn[data-turn="1"]')).to_have_class(re.compile(r"\binterrupted\b"))
    assert state(page)["samplesFlushed"] > 0
    no_violations(page, log)


FOREIGN = [
    "ws://evil.example/ws",
    "wss://evil.example/ws",
    "//evil.example/ws",
    "https://evil.example/ws",
    "ws://user:secret@127.0.0.1:1/ws",
    "http://[unparsable",
]


@pytest.mark.parametrize("override", FOREIGN)
def test_foreign_ws_override_is_never_used(open_page: OpenPage, site: str, override: str) -> None:
    """A crafted link (``?ws=wss://evil/ws``) must not stream the microphone to another server."""
    server = ScriptedServer()
    query = re.sub(r"[^A-Za-z0-9]", lambda m: f"%{ord(m.group()):02X}", override)
    page, log = open_scripted(open_page, f"{site}/?ws={query}", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected to its own server")
    own = f"{site.replace('http://', 'ws://')}/ws"
    assert server.urls == [own]
    s = state(page)
    assert s["socketUrl"] == own
    assert s["rejectedSocketUrl"] == override
    no_violations(page, log)


def test_same_origin_ws_path_override_is_kept(open_page: OpenPage, site: str) -> None:
    """Behind a proxy the socket may live on another path of the same server."""
    server = ScriptedServer()
    page, log = open_scripted(open_page, f"{site}/?ws=/voice/ws", server)
    wait_until(page, "window.voicechat.state === 'connected'", "page connected")
    assert server.urls == [f"{site.replace('http://', 'ws://')}/voice/ws"]
    assert state(page)["rejectedSocketUrl"] is None
    no_violations(page, log)


SOCKET_URL_CASES = """async (cases) => {
  const { socketUrl } = await import("./connection.js");
  return cases.map(([page, override]) => socketUrl(page, override));
}"""


def test_socket_url_rules(open_page: OpenPage, site: str) -> None:
    page, _ = open_scripted(open_page, f"{site}/", ScriptedServer())
    cases = [
        ("https://voice.example/app/", None),
        ("http://127.0.0.1:8080/", ""),
        ("https://voice.example/app/", "/other/ws"),
        ("https://voice.example/", "wss://voice.example/custom"),
        ("https://voice.example/", "https://voice.example/custom"),
        ("https://voice.example/", "ws://voice.example/ws"),  # a downgrade to cleartext
        ("https://voice.example/", "wss://voice.example:8443/ws"),  # another port is another origin
        ("https://voice.example/", "wss://evil.example/ws"),
    ]
    got = page.evaluate(SOCKET_URL_CASES, cases)
    assert got == [
        {"url": "wss://voice.example/app/ws", "rejected": None},
        {"url": "ws://127.0.0.1:8080/ws", "rejected": None},
        {"url": "wss://voice.example/other/ws", "rejected": None},
        {"url": "wss://voice.example/custom", "rejected": None},
        {"url": "wss://voice.example/custom", "rejected": None},
        {"url": "wss://voice.example/ws", "rejected": "ws://voice.example/ws"},
        {"url": "wss://voice.example/ws", "rejected": "wss://voice.example:8443/ws"},
        {"url": "wss://voice.example/ws", "rejected": "wss://evil.example/ws"},
    ]


TURN_RULES = """async () => {
  const { TurnTracker, PENDING } = await import("./turns.js");
  const t = new TurnTracker();
  const out = {};
  t.typed();
  out.typedThinking = t.thinking && t.busyTurn === PENDING;
  t.seen(3);
  t.replying(3);                       // the first reply delta numbers the typed turn
  out.numbered = t.busyTurn;
  out.accepted = t.audioStarted(3) && t.audioTarget() === 3;
  out.toInterrupt = t.toInterrupt();
  t.markInterrupted(3);
  out.afterInterrupt = [t.audioTarget(), t.active];
  out.lateAudioStart = t.audioStarted(3);   // a late audio_start of an interrupted turn is refused
  out.lateTarget = t.audioTarget();
  t.heard(4);
  t.seen(4);
  out.nextAccepted = t.audioStarted(4) && t.audioTarget() === 4;
  out.staleEnd = t.audioEnded(3);         // audio_end of another turn changes nothing
  out.ownEnd = t.audioEnded(4) && t.audioTarget() === null;
  t.finished(4);
  out.idle = [t.thinking, t.active, t.toInterrupt()];
  return out;
}"""


def test_turn_rules(open_page: OpenPage, site: str) -> None:
    """turns.js: whose audio plays, and that an interrupted turn's audio never does (pure, in the browser)."""
    page, log = open_scripted(open_page, f"{site}/", ScriptedServer())
    assert page.evaluate(TURN_RULES) == {
        "typedThinking": True,
        "numbered": 3,
        "accepted": True,
        "toInterrupt": 3,
        "afterInterrupt": [None, False],
        "lateAudioStart": False,
        "lateTarget": None,
        "nextAccepted": True,
        "staleEnd": False,
        "ownEnd": True,
        "idle": [False, False, 4],
    }
    assert log.unexpected_errors() == []
