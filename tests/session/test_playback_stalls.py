"""Gaps in a reply's audio: a later phrase synthesized after the audio sent so far has played is a stall,
counted in ``turn_metrics`` and the Prometheus counters; TTS faster than playback gives none."""

from __future__ import annotations

import pytest

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.connection import Connection

STORY = (
    "Once upon a time there was a small village by the sea where the fishermen went out every morning "
    "before dawn and came back at noon with their boats full of silver fish"
)


async def test_slow_synthesis_between_phrases_is_reported_as_stalls() -> None:
    before = metric("voicechat_session_playback_stalls_total")
    before_s = metric("voicechat_session_playback_stall_seconds_total")
    # Each phrase takes 0.5 s to synthesize but the first one plays for ~0.16 s (10 ms of tone per character):
    # the client runs dry before every later phrase.
    async with (
        session_app(FakeLLM(reply=STORY), fake_tts_latency_ms=500, fake_tts_ms_per_char=10) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start()
        await client.send({"type": "text", "text": "Tell me a story."})
        turn = await client.wait_turn(timeout_s=30)
        (session,) = service.registry.sessions.values()
        assert isinstance(session, Connection)
        assert session.turn is not None
        phrases = len(session.turn.clauses)
    stalls = turn.metrics["playback_stalls"]
    assert 2 <= stalls <= phrases - 1, (phrases, turn.metrics)  # at most one gap before each later phrase
    # Each gap is about the synthesis time less the previous phrase's playing time; all of them, summed.
    assert turn.metrics["playback_stall_ms"] >= stalls * 20
    assert turn.metrics["playback_stall_ms"] <= stalls * 500 + 200
    assert metric("voicechat_session_playback_stalls_total") - before == stalls
    assert metric("voicechat_session_playback_stall_seconds_total") - before_s == pytest.approx(
        turn.metrics["playback_stall_ms"] / 1000, abs=0.01
    )


async def test_synthesis_ahead_of_playback_has_no_stall() -> None:
    before = metric("voicechat_session_playback_stalls_total")
    async with (
        session_app(FakeLLM(reply=STORY)) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start()
        await client.send({"type": "text", "text": "Tell me a story."})
        turn = await client.wait_turn(timeout_s=30)
    assert turn.metrics["playback_stalls"] == 0
    assert turn.metrics["playback_stall_ms"] == 0
    assert turn.audio_seconds > 5  # a long reply, in many phrases
    assert metric("voicechat_session_playback_stalls_total") == before
