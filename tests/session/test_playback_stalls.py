"""Gaps in a reply's audio: a later phrase synthesized after the audio sent so far has played is a stall,
counted in ``turn_metrics`` and the Prometheus counters; TTS faster than playback gives none."""

from __future__ import annotations

import itertools

import pytest

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.connection import Connection
from voicechat_session.serving import TTS_SPEED_MARGIN, TTS_SPEED_SMOOTHING, Pod
from voicechat_session.settings import SessionSettings

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


async def test_later_phrases_grow_only_as_fast_as_the_pod_synthesizes() -> None:
    async with (
        session_app(FakeLLM(reply=STORY)) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start()
        # As if recent clauses took as long to synthesize as to play: no phrase may outgrow the one before.
        service.pod.chunk_growth_limit = lambda: 0.9  # type: ignore[method-assign]
        await client.send({"type": "text", "text": "Tell me a story."})
        await client.wait_turn(timeout_s=30)
        (session,) = service.registry.sessions.values()
        assert isinstance(session, Connection)
        assert session.turn is not None
        words = [len(clause.split()) for clause in session.turn.clauses]
    assert " ".join(session.turn.clauses) == STORY
    # Two words over only where no phrase break came sooner; the static rule doubles (see test_clauses).
    assert all(later <= earlier + 2 for earlier, later in itertools.pairwise(words)), words


async def test_each_clause_updates_the_pods_synthesis_speed() -> None:
    async with (
        session_app(FakeLLM(reply=STORY), fake_tts_latency_ms=100, fake_tts_ms_per_char=10) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        assert service.pod.tts_real_time_factor is None
        assert service.pod.chunk_growth_limit() is None  # nothing measured: the static rule
        await client.start()
        await client.send({"type": "text", "text": "Tell me a story."})
        await client.wait_turn(timeout_s=30)
        rtf = service.pod.tts_real_time_factor
    # 0.1 s per clause of 10 ms per character: every clause is a few hundred ms of audio.
    assert rtf is not None
    assert 0.05 < rtf < 1.5
    assert metric("voicechat_session_tts_real_time_factor") == rtf


def test_real_time_factor_is_a_running_average_and_sets_the_growth_limit() -> None:
    pod = Pod(SessionSettings(stt_backend="fake", tts_backend="fake", vad_backend="energy"))
    pod.record_synthesis(0.5, 1.0)
    assert pod.tts_real_time_factor == 0.5
    assert pod.chunk_growth_limit() == pytest.approx(TTS_SPEED_MARGIN / 0.5)
    pod.record_synthesis(1.5, 1.0)  # a slow clause moves the average part of the way
    assert pod.tts_real_time_factor == pytest.approx(0.5 + TTS_SPEED_SMOOTHING * 1.0)
    pod.record_synthesis(1.0, 0.0)  # nothing spoken: nothing learnt
    assert pod.tts_real_time_factor == pytest.approx(0.5 + TTS_SPEED_SMOOTHING * 1.0)
