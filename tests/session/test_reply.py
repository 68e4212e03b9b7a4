"""The reply pipeline on its own: a turn runs against a plain list outbox (no socket), and a reply started
before it is wanted (speculatively) is held, then committed or discarded with its LLM stream closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import FAKE_BACKENDS
from voicechat_session.backends.fake import FakeTTS
from voicechat_session.history import ConversationHistory
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE, AssistantMessage, ErrorCode
from voicechat_session.reply import HeldOutbox, ReplyEvent, TurnRunner, Voice
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings
from voicechat_session.turn import Turn, TurnState

REPLY = "Paris is the capital of France. It is lovely in spring."


@dataclass
class ListOutbox:
    events: list[object] = field(default_factory=list)
    audio_bytes: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, message: ReplyEvent) -> None:
        self.events.append(message)

    def send_audio(self, turn: Turn, clause: int, data: bytes) -> None:
        turn.sent_samples[clause] += len(data) // 2
        self.audio_bytes += len(data)

    def error(self, code: ErrorCode, message: str) -> None:
        self.events.append((code, message))

    def end_turn(self, turn: Turn) -> None:
        self.events.append(("end", turn.id))
        self.ended.set()


@contextlib.asynccontextmanager
async def runner(llm: FakeLLM) -> AsyncIterator[TurnRunner]:
    async with llm.serving() as url:
        pod = Pod(SessionSettings(**{**FAKE_BACKENDS, "llm_url": url, "output_lead_ms": 60_000}))
        await pod.start()
        try:
            assert pod.models is not None
            history = ConversationHistory(system_prompt="Be brief.", max_messages=10, max_chars=1000)
            yield TurnRunner(pod, pod.models, history, Voice("jf_alpha", 1.0), "test")
        finally:
            await pod.close()


async def test_a_turn_writes_only_to_its_outbox() -> None:
    async with runner(FakeLLM(reply=REPLY)) as run:
        outbox = ListOutbox()
        turn = Turn(id=1, source="text", user_end=0.0, text="Where is Paris?")
        await run.run(turn, None, outbox)
        assert turn.state is TurnState.COMPLETED
        deltas = [e.text for e in outbox.events if isinstance(e, AssistantMessage)]
        assert "".join(deltas) == REPLY
        assert outbox.events[-1] == ("end", 1)
        # The first chunk is a short phrase (clauses.py), the next ones grow.
        assert turn.clauses == ["Paris is the capital", "of France.", "It is lovely in spring."]
        expected = sum(round(FakeTTS().duration_s(c) * OUTPUT_SAMPLE_RATE) for c in turn.clauses)
        assert outbox.audio_bytes == 2 * expected
        assert turn.spoken_text() == REPLY
        assert [m.content for m in run.history.messages()] == ["Be brief.", "Where is Paris?"]


async def test_held_reply_is_released_on_commit() -> None:
    async with runner(FakeLLM(reply=REPLY)) as run:
        target = ListOutbox()
        held = HeldOutbox(target)
        turn = Turn(id=1, source="text", user_end=0.0, text="Where is Paris?")
        task = asyncio.create_task(run.run(turn, None, held))
        await asyncio.sleep(0.2)
        assert target.events == []
        assert target.audio_bytes == 0
        held.commit()
        await task
        assert "".join(e.text for e in target.events if isinstance(e, AssistantMessage)) == REPLY
        assert target.events[-1] == ("end", 1)
        assert target.audio_bytes > 0


async def test_discarded_reply_leaves_nothing_and_closes_the_llm_stream() -> None:
    llm = FakeLLM(reply=REPLY, token_delay_s=0.2)
    async with runner(llm) as run:
        target = ListOutbox()
        held = HeldOutbox(target)
        turn = Turn(id=1, source="text", user_end=0.0, text="Where is Paris?")
        task = asyncio.create_task(run.run(turn, None, held))
        await asyncio.sleep(0.3)  # the LLM stream is open
        assert llm.active == 1
        held.discard()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(llm.stream_cut.wait(), 5)
        assert llm.active == 0
        assert target.events == []
        with pytest.raises(RuntimeError, match="discarded"):
            held.commit()
