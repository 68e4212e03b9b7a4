"""The sans-IO measuring logic shared by the asyncio and the Locust client, fed with protocol messages."""

from __future__ import annotations

import numpy as np
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from voicechat_loadtest.client import (
    BadTargetError,
    ConnectRecorder,
    TurnRecorder,
    describe_handshake_error,
    http_base,
    parse_server_message,
    ws_url,
)
from voicechat_loadtest.speech import Speech, frame_bytes, load_speech
from voicechat_session.protocol import (
    AssistantMessage,
    AudioEndMessage,
    AudioStartMessage,
    ErrorMessage,
    InterruptedMessage,
    ReadyMessage,
    TranscriptMessage,
    TurnMetricsMessage,
)

SPEECH = Speech(name="q", text="What is the capital of France?", sample_rate=16_000, pcm=bytes(32_000))
AUDIO_FRAME = bytes(4_800)  # 0.1 s at 24 kHz PCM16


def _ready() -> ReadyMessage:
    return ReadyMessage(session_id="s1", connect_ms=0.4, voice="jf_alpha", speed=1.0, sharing="pod")


@pytest.mark.parametrize(
    ("url", "expected_ws", "expected_http"),
    [
        ("ws://h:1/ws", "ws://h:1/ws", "http://h:1"),
        ("http://h:1", "ws://h:1/ws", "http://h:1"),
        ("https://chat.example.com/", "wss://chat.example.com/ws", "https://chat.example.com"),
        (
            "wss://chat.example.com/voice/ws?x=1",
            "wss://chat.example.com/voice/ws?x=1",
            "https://chat.example.com",
        ),
    ],
)
def test_target_urls(url: str, expected_ws: str, expected_http: str) -> None:
    assert ws_url(url) == expected_ws
    assert http_base(url) == expected_http


@pytest.mark.parametrize("url", ["ftp://h/ws", "h:1", "", "ws:///ws"])
def test_bad_target_urls_are_refused(url: str) -> None:
    with pytest.raises(BadTargetError, match="invalid target URL"):
        ws_url(url)


def test_connect_recorder_measures_dial_to_ready() -> None:
    rec = ConnectRecorder(dialed=10.0)
    rec.on_open(10.01)
    assert rec.on_message(10.05, _ready())
    sample = rec.sample(user=3, origin=9.0)
    assert sample.connect_s == pytest.approx(0.05)
    assert sample.handshake_s == pytest.approx(0.01)
    assert (sample.user, sample.at_s, sample.session_id, sample.sharing) == (3, 1.0, "s1", "pod")
    assert sample.server_connect_ms == 0.4
    assert sample.error is None


def test_connect_recorder_reports_server_full() -> None:
    rec = ConnectRecorder(dialed=0.0)
    rec.on_open(0.01)
    rec.on_message(0.02, ErrorMessage(code="server_full", message="full: 8 of 8", fatal=True))
    sample = rec.sample(0, 0.0)
    assert (sample.error, sample.error_message, sample.connect_s) == ("server_full", "full: 8 of 8", None)


def test_connect_recorder_refuses_anything_but_ready_first() -> None:
    rec = ConnectRecorder(dialed=0.0)
    rec.on_message(0.1, b"\x00\x00")
    assert rec.sample(0, 0.0).error == "bad_message"


def test_handshake_errors_are_explained() -> None:
    rejected = InvalidStatus(Response(404, "Not Found", Headers()))
    code, message = describe_handshake_error("ws://h:1/nope", rejected)
    assert code == "handshake_rejected"
    assert "HTTP 404" in message
    assert "wrong URL" in message
    code, message = describe_handshake_error("ws://h:1/ws", ConnectionRefusedError(111, "Connection refused"))
    assert code == "connect_refused"
    assert "is anything listening" in message
    assert describe_handshake_error("ws://h:1/ws", TimeoutError())[0] == "connect_timeout"


def _voice_turn(rec: TurnRecorder, turn_id: int, t0: float) -> None:
    """The message sequence of one voice turn as the session service sends it."""
    rec.on_message(t0 + 0.5, TranscriptMessage(text="What is the capital", final=False, turn_id=turn_id))
    rec.on_message(
        t0 + 1.0, TranscriptMessage(text=" What is the capital of France?", final=True, turn_id=turn_id)
    )
    rec.on_message(t0 + 1.2, AssistantMessage(text="Paris", final=False, turn_id=turn_id))
    rec.on_message(t0 + 1.5, AudioStartMessage(turn_id=turn_id))
    rec.on_audio(t0 + 1.6, len(AUDIO_FRAME))
    rec.on_audio(t0 + 1.7, len(AUDIO_FRAME))
    rec.on_message(t0 + 1.8, AssistantMessage(text="Paris.", final=True, turn_id=turn_id))
    rec.on_message(t0 + 2.0, AudioEndMessage(turn_id=turn_id))


def test_turn_recorder_measures_from_end_of_speech() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=100.0)
    rec.speech_ended(101.0)
    _voice_turn(rec, turn_id=1, t0=101.0)
    assert (rec.replied, rec.complete) == (True, False)  # waits for the server's breakdown
    rec.on_message(102.1, TurnMetricsMessage(turn_id=1, source="voice", time_to_first_audio_ms=1590.0))
    assert rec.complete
    sample = rec.sample(user=1, turn=1, origin=99.0, match_threshold=0.8)
    assert sample.ttfa_s == pytest.approx(1.6)
    assert sample.turn_s == pytest.approx(2.0)
    assert sample.at_s == pytest.approx(1.0)
    assert (sample.transcript, sample.matched, sample.match_score) == (
        "What is the capital of France?",
        True,
        1.0,
    )
    assert sample.reply == "Paris."
    assert sample.audio_s == pytest.approx(0.2)
    assert sample.server is not None
    assert sample.server.time_to_first_audio_ms == 1590.0
    assert sample.error is None


def test_turn_recorder_ignores_the_previous_turn() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=1, started=0.0)
    rec.on_audio(0.1, 100)  # audio of turn 1 still arriving: not ours
    rec.on_message(0.2, AudioEndMessage(turn_id=1))
    rec.on_message(0.3, TurnMetricsMessage(turn_id=1, source="voice"))
    rec.speech_ended(1.0)
    assert not rec.replied
    assert rec.metrics is None
    assert rec.first_audio is None
    _voice_turn(rec, turn_id=2, t0=1.0)
    assert rec.turn_id == 2
    assert rec.sample(0, 2, 0.0, 0.8).ttfa_s == pytest.approx(1.6)


def test_turn_recorder_follows_a_split_utterance_to_its_last_turn() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=0.0)
    rec.speech_ended(1.0)
    rec.on_message(1.1, TranscriptMessage(text="What is", final=True, turn_id=1))
    rec.on_message(1.5, AudioStartMessage(turn_id=1))
    rec.on_audio(1.6, 100)
    rec.on_message(2.0, TranscriptMessage(text="the capital of France?", final=True, turn_id=2))
    rec.on_message(2.5, AudioStartMessage(turn_id=2))
    rec.on_audio(2.6, 100)
    rec.on_message(3.0, AudioEndMessage(turn_id=2))
    rec.on_message(3.1, TurnMetricsMessage(turn_id=2, source="voice"))
    sample = rec.sample(0, 1, 0.0, 0.8)
    assert sample.ttfa_s == pytest.approx(1.6)
    assert sample.transcript == "What is the capital of France?"
    assert sample.matched


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (ErrorMessage(code="llm_timeout", message="no first token"), "llm_timeout"),
        (InterruptedMessage(turn_id=1), "interrupted"),
        (_ready(), "bad_message"),
    ],
)
def test_turn_recorder_fails_on_errors(
    event: ErrorMessage | InterruptedMessage | ReadyMessage, code: str
) -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=0.0)
    rec.speech_ended(1.0)
    rec.on_message(1.1, TranscriptMessage(text="What is the capital of France?", final=True, turn_id=1))
    rec.on_message(1.2, event)
    assert rec.complete
    sample = rec.sample(0, 1, 0.0, 0.8)
    assert sample.error == code
    assert sample.matched  # what was heard is still recorded


def test_turn_recorder_records_a_dropped_connection() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=0.0)
    rec.on_closed(1011, "internal error")
    sample = rec.sample(0, 1, 0.0, 0.8)
    assert sample.error == "closed"
    assert sample.error_message is not None
    assert "1011" in sample.error_message
    assert not sample.matched


def test_transcript_mismatch_is_counted_as_such() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=0.0)
    rec.speech_ended(1.0)
    rec.on_message(1.1, TranscriptMessage(text="What is the capital of Spain?", final=True, turn_id=1))
    sample = rec.sample(0, 1, 0.0, match_threshold=0.95)
    assert sample.match_score == pytest.approx(2 * 5 / 12, abs=1e-4)
    assert not sample.matched


def test_parse_server_message() -> None:
    assert parse_server_message(b"\x01\x02") == b"\x01\x02"
    msg = parse_server_message('{"type": "audio_end", "turn_id": 4}')
    assert msg == AudioEndMessage(turn_id=4)


def test_shipped_speech_is_real_16k_speech_with_texts() -> None:
    speeches = load_speech()
    assert len(speeches) >= 3
    for speech in speeches:
        assert speech.sample_rate == 16_000
        assert 0.8 < speech.duration_s < 4.0
        assert speech.text.endswith(("?", "."))
        frames = speech.frames(20)
        assert all(len(f) == frame_bytes(16_000, 20) for f in frames[:-1])
        assert b"".join(frames) == speech.pcm
        samples = np.frombuffer(speech.pcm, dtype="<i2")
        assert np.abs(samples).max() > 3000  # speech, not silence (trimmed, so loud within its first 100 ms)
        assert np.abs(samples[:1600]).max() > 300


def test_turn_recorder_keeps_why_the_reply_was_interrupted() -> None:
    rec = TurnRecorder(speech=SPEECH, after_turn_id=0, started=0.0)
    rec.speech_ended(1.0)
    rec.on_message(1.1, TranscriptMessage(text="What is the capital of France?", final=True, turn_id=1))
    rec.on_message(1.2, InterruptedMessage(turn_id=1, reason="shutdown"))
    sample = rec.sample(0, 1, 0.0, 0.8)
    assert (sample.error, sample.interrupt_reason) == ("interrupted", "shutdown")
