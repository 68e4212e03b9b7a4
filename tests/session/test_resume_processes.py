"""Two session service processes sharing a resume key (fake backends, a recording fake LLM): a conversation on
A, SIGTERM to A in the middle of a turn, the client continues on B, and B's LLM request holds the earlier turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.support.fake_llm import FakeLLM
from tests.support.fake_service import base_url, fake_session_process
from tests.support.ws_client import VoiceChatClient
from voicechat_common.localstack import ManagedProcess
from voicechat_session.protocol import CloseCode

KEY = "a-shared-resume-key-of-the-voicechat-0123456789"


@contextlib.asynccontextmanager
async def two_pods(api_url: str, log_dir: Path) -> AsyncIterator[tuple[ManagedProcess, ManagedProcess]]:
    pods = [fake_session_process(api_url, log_dir, name, resume_key=KEY, drain_grace_s=20) for name in "ab"]
    try:
        for pod in pods:
            pod.start()
        # Waited on from threads: the fake LLM they call lives on this event loop.
        await asyncio.gather(*(asyncio.to_thread(pod.wait_ready, 60) for pod in pods))
        yield pods[0], pods[1]
    finally:
        await asyncio.gather(*(asyncio.to_thread(pod.stop) for pod in pods))


async def _say(client: VoiceChatClient, text: str) -> None:
    mark = len(client.events)
    await client.send({"type": "text", "text": text})
    await client.wait_turn(after=mark, timeout_s=30)


def _ws(pod: ManagedProcess) -> str:
    return base_url(pod).replace("http://", "ws://") + "/ws"


def _tokens(client: VoiceChatClient) -> list[str]:
    return [e["token"] for e in client.events if isinstance(e, dict) and e.get("type") == "resume_token"]


async def test_sigterm_mid_conversation_continues_on_another_process(tmp_path: Path) -> None:
    # Slow tokens: the SIGTERM lands while the second reply is still being written.
    llm = FakeLLM(
        reply="I will remember that.", replies={"name?": "Your name is in the history."}, token_delay_s=0.1
    )
    async with llm.serving() as api_url, two_pods(api_url, tmp_path) as (pod_a, pod_b):
        async with VoiceChatClient.connect(_ws(pod_a)) as client:
            await _say(client, "My name is Ada.")
            mark = len(client.events)
            await client.send({"type": "text", "text": "I live in Paris."})
            await client.wait_for("assistant", final=False, after=mark, timeout_s=10)
            assert pod_a.proc is not None
            pod_a.proc.send_signal(signal.SIGTERM)
            code, _reason = await client.wait_closed(timeout_s=30)
            assert code == CloseCode.GOING_AWAY
            finished = client.turn_result(2)
            assert not finished.metrics["interrupted"]  # the drain let the turn in flight finish
            token = _tokens(client)[-1]
        assert await asyncio.to_thread(pod_a.proc.wait, 30) == 0

        async with VoiceChatClient.connect(_ws(pod_b)) as client:
            await client.send({"type": "start", "sample_rate": 16_000, "resume_token": token})
            resumed: dict[str, Any] = await client.wait_for("resumed", timeout_s=10)
            assert resumed["resumed"] is True
            await _say(client, "What is my name?")

    request = llm.requests[-1]["messages"]
    assert [m["role"] for m in request] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in request[1:]] == [
        "My name is Ada.",
        "I will remember that.",
        "I live in Paris.",
        "I will remember that.",
        "What is my name?",
    ]
