"""The browser client in a real headless Chromium against the real stack (LLM service + session service).

The fake microphone plays a spoken WAV; the page is driven like a person drives it (clicks, typing, keys)
and observed through its DOM and its own state on ``window.voicechat`` (the player worklet's counters of
samples really rendered, per turn).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.conftest import REPO_ROOT
from tests.support.browser import PageLog, publish_screenshot
from tests.support.speech import speech_wav, words
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE, CloseCode, ErrorMessage

pytestmark = [pytest.mark.browser, pytest.mark.models]

UTTERANCE = "What is the capital of France?"
# The CPU stack shares two cores with other work: generous deadlines, always conditions, never sleeps.
TURN_TIMEOUT_S = 180.0
CAPTURE_RATE = 16_000  # what the page announces in `start`

OpenPage = Callable[..., tuple[Page, PageLog]]
# Reply audio is playing and at least 250 ms more waits in the jitter buffer: enough that a click lands
# while there is still something to flush, even on a loaded machine.
PLAYING_WITH_BUFFER = (
    "window.voicechat.playingTurn !== null && "
    "window.voicechat.bufferedSamples > 0.25 * window.voicechat.contextSampleRate"
)


@pytest.fixture(scope="module")
def spoken_wav() -> Path:
    # A second of silence first (the AGC settles), then the question, then long silence so the VAD ends the turn.
    return speech_wav(UTTERANCE, lead_s=1.0, tail_s=12.0)


def state(page: Page) -> dict[str, Any]:
    """The page's own view of itself (``window.voicechat``), as plain JSON."""
    value = page.evaluate("JSON.stringify(window.voicechat)")
    assert isinstance(value, str)
    parsed: dict[str, Any] = json.loads(value)
    return parsed


def wait_until(page: Page, expression: str, timeout_s: float, what: str) -> None:
    """Wait for a JavaScript condition on the page; fail with the page's state if it never holds."""
    try:
        # As a function: the service's CSP refuses the eval() Playwright uses for a bare expression.
        page.wait_for_function(f"() => ({expression})", timeout=timeout_s * 1000, polling=50)
    except PlaywrightTimeout:
        pytest.fail(f"{what}: not within {timeout_s:.0f}s. Page state: {json.dumps(state(page))[:3000]}")


def wait_connected(page: Page) -> None:
    wait_until(page, "window.voicechat && window.voicechat.state === 'connected'", 30, "page connected")
    expect(page.locator("#connection-text")).to_have_text("Connected")


def test_spoken_turn_shows_words_reply_and_plays_audio(
    open_page: OpenPage, session_url: str, spoken_wav: Path, browser_dir: Path
) -> None:
    # The README's screenshot: a laptop-sized window.
    page, log = open_page(f"{session_url}/", wav=spoken_wav, viewport={"width": 960, "height": 720})
    wait_connected(page)
    expect(page.locator("#voice option")).not_to_have_count(0)

    started = time.monotonic()
    page.get_by_role("button", name="Start the microphone").click()
    expect(page.get_by_role("button", name="Stop the microphone")).to_be_visible()
    wait_until(page, "window.voicechat.framesSent > 10", 30, "microphone frames sent")

    # The page announced the rate it resamples to (whatever the context runs at), then streamed binary PCM.
    start = log.sent_of_type("start")
    assert len(start) == 1, log.sent
    assert start[0]["sample_rate"] == CAPTURE_RATE
    assert log.binary_sent > 10

    wait_until(page, "window.voicechat.transcripts.length > 0", TURN_TIMEOUT_S, "final transcript shown")
    user_text = page.locator(".msg.user .body").first
    heard = words(user_text.inner_text())
    assert {"capital", "france"} <= set(heard), f"transcript {heard!r} misses the spoken words"

    wait_until(page, "window.voicechat.assistantTexts.length > 0", TURN_TIMEOUT_S, "assistant reply finished")
    wait_until(page, "window.voicechat.samplesPlayed > 0", TURN_TIMEOUT_S, "reply audio played")
    wait_until(page, "window.voicechat.turnMetrics.length > 0", TURN_TIMEOUT_S, "turn metrics shown")
    # The rest of the reply plays out; the page settles back to listening.
    wait_until(page, "window.voicechat.activity === 'listening'", TURN_TIMEOUT_S, "reply played out")
    elapsed = time.monotonic() - started
    expect(page.get_by_role("button", name="Interrupt")).to_be_disabled()

    reply = page.locator(".msg.assistant .body").first.inner_text().strip()
    assert len(words(reply)) >= 2, reply
    s = state(page)
    played, received, rate = s["samplesPlayed"], s["samplesReceived"], s["contextSampleRate"]
    # Everything received was rendered, resampled from 24 kHz to the context rate (within ~20 ms).
    assert received > OUTPUT_SAMPLE_RATE // 4, f"only {received} samples of reply audio"
    assert played == pytest.approx(received * rate / OUTPUT_SAMPLE_RATE, abs=rate * 0.02)
    assert s["playedPeak"] > 0.02, "the played reply was silent"
    assert s["bufferedSamples"] == 0

    metrics = page.locator(".msg.assistant .metrics").first
    expect(metrics).to_contain_text("STT")
    expect(metrics).to_contain_text("LLM first token")
    expect(metrics).to_contain_text("First audio")
    assert log.received_of_type("turn_metrics")[0]["source"] == "voice"

    shot = browser_dir / "spoken-turn.png"
    page.screenshot(path=str(shot))
    publish_screenshot(shot, REPO_ROOT)

    # Stop releases the microphone: no more audio leaves the page.
    page.get_by_role("button", name="Stop the microphone").click()
    expect(page.get_by_role("button", name="Start the microphone")).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#activity-text")).to_have_text("Microphone off")
    frames_after_stop = state(page)["framesSent"]
    page.wait_for_timeout(300)  # observing an absence: ~10 frames would have left in this time
    assert state(page)["framesSent"] == frames_after_stop
    assert log.unexpected_errors() == []
    print(f"spoken turn: click → reply played out in {elapsed:.1f}s; transcript {user_text.inner_text()!r}")


def test_interrupt_flushes_playback_and_next_turn_plays(
    open_page: OpenPage, session_url: str, browser_dir: Path
) -> None:
    page, log = open_page(f"{session_url}/")
    wait_connected(page)

    # A typed turn, sent with Enter from the keyboard.
    box = page.get_by_label("Message")
    box.fill("Describe a sunny day at the beach in three sentences.")
    box.press("Enter")
    expect(page.locator(".msg.user .body").first).to_contain_text("sunny day at the beach")

    # Interrupt while reply audio is playing and more of it is waiting in the jitter buffer.
    wait_until(
        page,
        PLAYING_WITH_BUFFER,
        TURN_TIMEOUT_S,
        "reply audio playing with audio buffered",
    )
    expect(page.get_by_role("button", name="Interrupt")).to_be_enabled()
    page.get_by_role("button", name="Interrupt").click()

    # Flushed at once: the player reports an empty buffer without waiting for the server.
    wait_until(
        page, "window.voicechat.flushes >= 1 && window.voicechat.bufferedSamples === 0", 2, "playback flushed"
    )
    s = state(page)
    turn = str(s["playingTurn"])
    played_at_flush = s["playedByTurn"][turn]
    received_at_flush = s["receivedByTurn"][turn]
    assert s["samplesFlushed"] > 0

    # The server confirms; nothing more of that turn reaches the player or the speakers.
    wait_until(page, "(window.voicechat.messageCounts.interrupted || 0) >= 1", 30, "server sent interrupted")
    assert [m["turn_id"] for m in log.received_of_type("interrupted")] == [int(turn)]
    assert log.sent_of_type("interrupt"), log.sent
    expect(page.locator(f'.turn[data-turn="{turn}"]')).to_have_class(re.compile(r"\binterrupted\b"))
    expect(page.get_by_role("button", name="Interrupt")).to_be_disabled()
    page.wait_for_timeout(1500)  # observing an absence: give late frames of the turn time to (not) play
    s = state(page)
    assert s["playedByTurn"][turn] == played_at_flush
    assert s["receivedByTurn"][turn] == received_at_flush
    assert s["activity"] != "assistant"

    # Not stuck "speaking" after the interruption: the next turn plays normally.
    box.fill("Say hello.")
    box.press("Enter")
    wait_until(
        page,
        f"Object.keys(window.voicechat.playedByTurn).some(t => Number(t) > {turn} && "
        "window.voicechat.playedByTurn[t] > 0)",
        TURN_TIMEOUT_S,
        "next turn's audio played",
    )
    page.screenshot(path=str(browser_dir / "after-interrupt.png"))
    assert log.unexpected_errors() == []


def test_speaking_over_the_reply_interrupts_it(
    open_page: OpenPage, session_url: str, browser_dir: Path
) -> None:
    # Speech starts as soon as the microphone opens: the person talks over the assistant (barge-in).
    interjection = speech_wav("Wait, stop please. Tell me about Paris instead.", lead_s=0.2, tail_s=10.0)
    page, log = open_page(f"{session_url}/", wav=interjection)
    wait_connected(page)
    box = page.get_by_label("Message")
    box.fill("Describe a sunny day at the beach in three sentences.")
    box.press("Enter")
    wait_until(
        page,
        PLAYING_WITH_BUFFER,
        TURN_TIMEOUT_S,
        "reply audio playing with audio buffered",
    )
    turn = str(state(page)["playingTurn"])
    page.get_by_role("button", name="Start the microphone").click()

    # The server hears the person and interrupts its own turn; the page flushes on its `interrupted`.
    wait_until(page, f"window.voicechat.interruptedTurns.includes({turn})", TURN_TIMEOUT_S, "server barge-in")
    reasons = [m.get("reason") for m in log.received_of_type("interrupted") if m["turn_id"] == int(turn)]
    assert reasons == ["barge_in"], log.received_of_type("interrupted")
    assert not log.sent_of_type("interrupt"), "the page must not have interrupted on its own"
    wait_until(page, "window.voicechat.bufferedSamples === 0", 2, "playback flushed")
    played_at_flush = state(page)["playedByTurn"][turn]
    # The interjection becomes the next turn and gets its own answer.
    wait_until(
        page,
        f"window.voicechat.transcripts.some(t => t.turn > {turn} && /paris/i.test(t.text))",
        TURN_TIMEOUT_S,
        "interjection transcribed",
    )
    assert state(page)["playedByTurn"][turn] == played_at_flush
    page.screenshot(path=str(browser_dir / "barge-in.png"))
    assert log.unexpected_errors() == []


def test_server_error_is_shown_in_words(open_page: OpenPage, session_url: str, browser_dir: Path) -> None:
    page, log = open_page(f"{session_url}/")
    wait_connected(page)
    # A voice list gone stale (say, the pod was redeployed with other voices): pick a voice the server lacks.
    page.evaluate("document.getElementById('voice').add(new Option('Old voice', 'zz_retired'))")
    page.get_by_label("Voice", exact=True).select_option("zz_retired")

    banner = page.get_by_role("alert")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner).to_contain_text("That voice is not available on this server")
    assert "unknown_voice" not in banner.inner_text()
    assert [m["code"] for m in log.received_of_type("error")] == ["unknown_voice"]
    # The session survives and the page falls back to a voice the server has.
    expect(page.get_by_label("Voice", exact=True)).not_to_have_value("zz_retired")
    assert state(page)["state"] == "connected"
    page.screenshot(path=str(browser_dir / "error-shown.png"))

    page.get_by_role("button", name="Dismiss the error").click()
    expect(banner).to_be_hidden()

    # Reset clears the server's history, and the page says so.
    page.get_by_role("button", name="Reset").click()
    expect(page.locator(".note")).to_have_text("Conversation history cleared.")
    assert log.sent_of_type("reset")
    assert log.unexpected_errors() == []


def test_dropped_connection_reconnects_with_countdown(
    open_page: OpenPage, session_url: str, browser_dir: Path
) -> None:
    routes: list[WebSocketRoute] = []

    def relay(route: WebSocketRoute) -> None:
        route.connect_to_server()
        routes.append(route)

    # Relay the page's socket through Playwright so the test can cut it like a network drop would.
    launch_page, log = open_page("about:blank")
    launch_page.route_web_socket(re.compile(r".*/ws$"), relay)
    launch_page.goto(f"{session_url}/")
    wait_connected(launch_page)
    first_session = state(launch_page)["sessionId"]

    routes[-1].close()  # as if the network dropped: no error message, no application close code
    status = launch_page.locator("#connection-text")
    expect(status).to_have_text(re.compile(r"Reconnecting in \d+ s…"), timeout=10_000)
    launch_page.screenshot(path=str(browser_dir / "reconnecting.png"))
    expect(launch_page.get_by_role("button", name="Reconnect now")).to_be_visible()

    wait_connected(launch_page)
    # The page resumes with the token the first session gave it: the same conversation goes on.
    launch_page.wait_for_function("() => window.voicechat.resumeOutcomes.length === 1", timeout=10_000)
    s = state(launch_page)
    assert s["resumeOutcomes"] == ["ok"]
    assert s["sessionId"] == first_session
    assert s["reconnects"] == 1
    assert len(routes) == 2
    assert log.unexpected_errors() == []


RESAMPLER_CHECK = """async ([inRate, outRate, freq]) => {
  const { StreamResampler } = await import("./resampler.js");
  const r = new StreamResampler(inRate, outRate);
  const x = new Float32Array(inRate);  // one second
  for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * freq * i / inRate);
  const parts = [];
  for (let i = 0; i < x.length; i += 128) parts.push(r.process(x.subarray(i, i + 128)));  // render quanta
  const y = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { y.set(p, o); o += p.length; }
  let err = 0, power = 0, n = 0;
  for (let k = 200; k < y.length - 200; k++) {
    const ideal = 0.5 * Math.sin(2 * Math.PI * freq * k / outRate);
    err += (y[k] - ideal) ** 2; power += y[k] ** 2; n++;
  }
  return { length: y.length, latency: r.latencySamples, rmsError: Math.sqrt(err / n), rms: Math.sqrt(power / n) };
}"""


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(44_100, 16_000), (48_000, 16_000), (24_000, 44_100), (24_000, 48_000)]
)
def test_worklet_resampler_is_accurate_in_the_browser(
    open_page: OpenPage, session_url: str, in_rate: int, out_rate: int
) -> None:
    """The resampler both worklets use (any context rate ↔ 16 kHz up, 24 kHz down), run by the browser."""
    page, log = open_page(f"{session_url}/")
    speech_band = page.evaluate(RESAMPLER_CHECK, [in_rate, out_rate, 440])
    # One second in → one second out, less the look-ahead still held back.
    held_back = speech_band["latency"] * out_rate / in_rate
    assert out_rate - held_back - 2 <= speech_band["length"] <= out_rate
    assert speech_band["rmsError"] < 1e-3, speech_band  # a 440 Hz tone comes out unchanged
    if out_rate < in_rate:
        # Above the new Nyquist frequency: filtered out, not folded back into the speech band as a whistle.
        alias = page.evaluate(RESAMPLER_CHECK, [in_rate, out_rate, 0.45 * in_rate - 2_000])
        assert alias["rms"] < 0.5 / 2**0.5 * 10 ** (-60 / 20), alias
    assert log.unexpected_errors() == []


def test_full_server_is_explained_and_retried(
    open_page: OpenPage, session_url: str, browser_dir: Path
) -> None:
    attempts: list[WebSocketRoute] = []

    def first_refused(route: WebSocketRoute) -> None:
        attempts.append(route)
        if len(attempts) == 1:
            # Exactly what a session pod at max_sessions sends (voicechat_session.app.serve_websocket).
            refusal = ErrorMessage(code="server_full", message="at max_sessions (8)", fatal=True)
            route.send(refusal.model_dump_json())
            route.close(code=CloseCode.TRY_AGAIN_LATER, reason="at max_sessions (8)")
        else:
            route.connect_to_server()

    page, log = open_page("about:blank")
    page.route_web_socket(re.compile(r".*/ws$"), first_refused)
    page.goto(f"{session_url}/")
    banner = page.get_by_role("alert")
    expect(banner).to_contain_text("The server is busy: every session slot is in use.")
    expect(page.locator("#connection-text")).to_have_text(re.compile(r"Server busy\. Reconnecting in \d+ s…"))
    page.screenshot(path=str(browser_dir / "server-full.png"))
    # The retry gets in; the busy message goes away by itself.
    wait_connected(page)
    expect(banner).to_be_hidden()
    assert len(attempts) == 2
    assert log.unexpected_errors() == []


def test_page_is_usable_on_a_phone_and_by_keyboard(
    open_page: OpenPage, session_url: str, browser_dir: Path
) -> None:
    page, log = open_page(f"{session_url}/", viewport={"width": 390, "height": 844})
    wait_connected(page)
    # Nothing wider than the screen; every control reachable and labelled.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for control in (
        page.get_by_role("button", name="Start the microphone"),
        page.get_by_role("button", name="Interrupt"),
        page.get_by_role("button", name="Reset"),
        page.get_by_label("Message"),
        page.get_by_role("button", name="Send"),
    ):
        expect(control).to_be_visible()
        box = control.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 390
        assert box["height"] >= 40, "touch targets at least ~44 px high"

    # Keyboard: a skip link first, then Tab walks the controls in reading order.
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    order = []
    for _ in range(5):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    # (Interrupt is disabled while the assistant is silent, so Tab skips it; settings are folded on a phone.)
    assert order == ["start", "reset", "text-input", "send", "SUMMARY"], order
    page.keyboard.press("Enter")  # unfolds the voice settings
    expect(page.get_by_label("Voice", exact=True)).to_be_visible()
    expect(page.get_by_label("Speed")).to_be_visible()
    assert page.get_by_label("Voice", exact=True).locator("option").count() > 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    # Speed changes reach the server as `configure` and are acknowledged.
    page.get_by_label("Speed").fill("1.25")
    expect(page.locator("#speed-value")).to_have_text("1.25\N{MULTIPLICATION SIGN}")
    wait_until(page, "window.voicechat.speed === 1.25", 30, "speed applied")
    assert any(m.get("speed") == 1.25 for m in log.sent_of_type("configure"))
    page.screenshot(path=str(browser_dir / "phone.png"), full_page=True)
    assert log.unexpected_errors() == []
