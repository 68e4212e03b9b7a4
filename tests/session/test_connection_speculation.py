"""Speculative end of turn over a real WebSocket (fake STT/TTS/VAD with scripted latencies, scripted LLM).

The reply starts at a short pause (``speculate_silence_ms``) and is held until the end of turn is decided
(``vad_min_silence_ms``): committed, it is the turn's reply; discarded when the user speaks again, nothing of
it reaches the client or the history and its LLM stream is closed.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import SCRIPT, InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.backends.fake import FakeTTS, utterance_tone
from voicechat_session.connection import Connection
from voicechat_session.pool import Priority

RATE = 16_000
REPLY = "Sure. Here is more about it, told at a calm pace so that it lasts a while."
SPEC = "voicechat_session_speculations_total"


def kinds(events: list[object]) -> list[str]:
    return [e["type"] if isinstance(e, dict) else "<audio>" for e in events]


def connection_of(service: InProcessService) -> Connection:
    (session,) = service.registry.sessions.values()
    assert isinstance(session, Connection)
    return session


def with_gap(gap_s: float, first_s: float = 0.6, second_s: float = 0.6) -> np.ndarray:
    """Scripted utterance 2 with a silent gap inside: a pause long enough to speculate, too short to end."""
    return np.concatenate(
        [
            utterance_tone(2, first_s, RATE),
            np.zeros(round(gap_s * RATE), dtype=np.float32),
            utterance_tone(2, second_s, RATE),
        ]
    )


async def test_speculation_committed_is_the_turn() -> None:
    committed = metric(SPEC, outcome="committed")
    async with (
        session_app(FakeLLM(reply=REPLY), fake_stt_latency_ms=100) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(2, 0.6, RATE), RATE, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.turn_id == 1
        assert turn.transcript == SCRIPT[2]
        assert turn.assistant_final == REPLY
        m = turn.metrics
        assert m["speculation"] == "hit"
        # Work started at the pause, ~300 ms before the end was decided (500 ms - 200 ms of silence).
        assert 150 <= m["speculation_head_start_ms"] <= 500
        assert m["time_to_first_audio_ms"] >= m["endpointing_ms"], "held until the end of turn"
        assert m["llm_first_phrase_ms"] is not None
        # Everything of the turn arrived once, in the usual order.
        order = [k for k in kinds(turn.events) if k != "<audio>"]
        assert order.count("transcript") == 1
        assert order.index("transcript") < order.index("audio_start") < order.index("audio_end")
        assert await client.history() == [  # the system prompt is never sent to clients
            {"role": "user", "content": SCRIPT[2]},
            {"role": "assistant", "content": REPLY},
        ]
        assert len(service.llm.requests) == 1
    assert metric(SPEC, outcome="committed") == committed + 1


async def test_speculation_discarded_when_speech_resumes() -> None:
    # Slow tokens: the speculative stream is still open when the user speaks again.
    llm = FakeLLM(reply=REPLY, token_delay_s=0.2)
    discarded = metric(SPEC, outcome="discarded")
    async with (
        session_app(llm) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        speaking = asyncio.create_task(client.stream_audio(with_gap(0.35), RATE, trailing_silence_s=0.8))
        async with asyncio.timeout(10):
            await llm.stream_cut.wait()  # the speculative LLM stream was closed by the client
        seen = list(client.events)
        conn = connection_of(service)
        assert [m.role for m in conn.history.messages()] == ["system"], "uncommitted words never enter"
        assert not speaking.done(), "discarded while the user is still talking"
        assert not {"transcript", "assistant", "audio_start", "<audio>", "turn_metrics"} & set(kinds(seen))
        await speaking
        turn = await client.wait_turn(timeout_s=20)
        # One turn, id 1 (the discarded attempt used no id), answered once, on the whole utterance.
        assert turn.turn_id == 1
        assert turn.assistant_final == REPLY
        assert kinds(client.events).count("transcript") == 1
        assert kinds(client.events).count("audio_start") == 1
        assert turn.metrics["speculation"] == "hit"  # the pause at the real end was committed
        assert [m["role"] for m in await client.history()] == ["user", "assistant"]
        assert len(llm.requests) == 2
        assert llm.cancelled == 1
        assert llm.max_active == 1, "at most one speculative attempt in flight"
    assert metric(SPEC, outcome="discarded") == discarded + 1


async def test_one_speculation_at_a_time_through_many_pauses() -> None:
    llm = FakeLLM(reply=REPLY, token_delay_s=0.2)
    discarded = metric(SPEC, outcome="discarded")
    async with (
        session_app(llm, fake_stt_latency_ms=50) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        gap = np.zeros(round(0.35 * RATE), dtype=np.float32)
        parts = [utterance_tone(2, 0.4, RATE), gap] * 3 + [utterance_tone(2, 0.4, RATE)]
        await client.stream_audio(np.concatenate(parts), RATE, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.turn_id == 1
        assert turn.assistant_final == REPLY
        assert kinds(client.events).count("audio_start") == 1
        assert llm.max_active == 1
        assert [m["role"] for m in await client.history()] == ["user", "assistant"]
    # Each of the three pauses inside the utterance started one attempt, discarded when speech resumed.
    assert metric(SPEC, outcome="discarded") == discarded + 3
    assert len(llm.requests) == 4


async def test_no_speculation_when_the_pod_is_saturated() -> None:
    saturated = metric(SPEC, outcome="saturated")
    async with (
        session_app(FakeLLM(reply=REPLY), workers=1, speculate_max_waiting=0) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        # Another session's work fills the pool: one call runs, one waits.
        busy = [asyncio.create_task(service.pod.run_model(Priority.REPLY, time.sleep, 1.5)) for _ in range(2)]
        await asyncio.sleep(0)  # both tasks reach the pool: the first takes the thread, the second queues
        assert service.pod.pool.waiting == 1
        await client.stream_audio(utterance_tone(2, 0.6, RATE), RATE, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.metrics["speculation"] == "none"
        assert turn.assistant_final == REPLY
        await asyncio.gather(*busy)
    assert metric(SPEC, outcome="saturated") == saturated + 1


async def test_barge_in_during_the_first_phrase_of_a_committed_reply() -> None:
    long_reply = " ".join(f"Part {i} of a long answer, spoken slowly." for i in range(10))
    async with (
        session_app(FakeLLM(reply=long_reply, replies={"stop": "Okay."})) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(2, 0.6, RATE), RATE, trailing_silence_s=0.6)
        start = await client.wait_for("audio_start", timeout_s=20)
        assert start["turn_id"] == 1
        first = await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=10)
        mark = first[0] + 1
        await client.stream_audio(utterance_tone(1, 0.6, RATE), RATE, trailing_silence_s=0.8)
        interrupted = await client.wait_for("interrupted", turn_id=1, after=mark, timeout_s=10)
        assert interrupted["reason"] == "barge_in"
        cut = client.events.index(interrupted)
        end = await client.wait_for("turn_metrics", turn_id=1, timeout_s=10)
        assert end["interrupted"]
        assert end["speculation"] == "hit"
        # Nothing of turn 1 after `interrupted` but its closing messages; the next turn answers.
        after = client.turn_result(1).events
        assert not any(isinstance(e, bytes) for e in client.events[cut : client.events.index(end)])
        assert after[-1]["type"] == "turn_metrics"
        turn2 = await client.wait_for("turn_metrics", turn_id=2, timeout_s=20)
        assert not turn2["interrupted"]
        history = await client.history()
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        spoken = history[1]["content"]
        assert spoken
        assert long_reply.startswith(spoken[: len(spoken) // 2])
        assert spoken != long_reply


@pytest.mark.parametrize("silence_ms", [0, 500])
async def test_speculation_off(silence_ms: int) -> None:
    async with (
        session_app(FakeLLM(reply=REPLY), speculate_silence_ms=silence_ms) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(2, 0.6, RATE), RATE, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=20)
        assert turn.metrics["speculation"] == "none"
        assert turn.metrics["speculation_head_start_ms"] is None
        assert turn.assistant_final == REPLY


async def test_chunks_grow_as_sent() -> None:
    story = (
        "Once upon a time there was a small village by the sea where the fishermen went out every morning "
        "before dawn and came back at noon with their boats full of silver fish for the market in town"
    )
    async with (
        session_app(FakeLLM(reply=story)) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(utterance_tone(2, 0.6, RATE), RATE, trailing_silence_s=0.8)
        turn = await client.wait_turn(timeout_s=30)
        sent = connection_of(service).turn
        assert sent is not None
        assert sent.id == turn.turn_id
        words = [len(chunk.split()) for chunk in sent.clauses]
        assert " ".join(sent.clauses) == story, "every word spoken once, in order"
        assert 3 <= words[0] <= 5, f"a short first phrase: {words}"
        assert words[1] > words[0], f"then growing: {words}"
        for before, after in itertools.pairwise(words[:-1]):
            assert after <= 3 * before, f"each chunk synthesized while the one before plays: {words}"
        # What the client received is exactly those chunks' audio (the tone TTS: length follows the text).
        assert turn.audio_seconds == pytest.approx(
            sum(FakeTTS().duration_s(c) for c in sent.clauses), abs=0.01
        )
