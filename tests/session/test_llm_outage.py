"""The LLM service stops and comes back during a session: an error event, then the same session works again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.session.conftest import SessionService, session_service
from tests.support.ws_client import VoiceChatClient
from voicechat_common.localstack import LocalStack

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def own_llm(artifacts_dir: Path) -> Iterator[LocalStack]:
    """An LLM service of its own (stopping the shared one would disturb other tests)."""
    llm_env = {"VOICECHAT_LLM_WARMUP_REQUESTS": "1", "VOICECHAT_LLM_WARMUP_MAX_TOKENS": "8"}
    with LocalStack.on_free_ports(
        with_session=False, llm_env=llm_env, log_dir=artifacts_dir / "logs" / "llm-outage"
    ) as llm:
        yield llm


@pytest.fixture(scope="module")
def outage_service(own_llm: LocalStack, session_logs: Path) -> Iterator[SessionService]:
    env = {"llm_first_token_timeout_s": "20", "partial_transcripts": "false"}
    with session_service(
        own_llm.llm_api_url, own_llm.llm_gate_url, session_logs, "llm-outage", env
    ) as service:
        yield service


async def test_llm_stopped_and_restarted_during_a_session(
    own_llm: LocalStack, outage_service: SessionService
) -> None:
    async with VoiceChatClient.connect(outage_service.ws_url) as client:
        await client.send({"type": "text", "text": "Say hello."})
        assert (await client.wait_turn(timeout_s=240)).assistant_final

        assert own_llm.llm is not None
        await asyncio.to_thread(own_llm.llm.stop)
        mark = len(client.events)
        await client.send({"type": "text", "text": "Are you there?"})
        error = await client.wait_for("error", after=mark, timeout_s=60)
        assert error["code"] == "llm_unavailable"
        assert error["fatal"] is False
        turn = await client.wait_turn(after=mark, timeout_s=30)
        assert turn.audio == b""
        assert not client.closed

        # Keep the session busy while the LLM restarts, then talk again in the same session.
        restart = asyncio.create_task(asyncio.to_thread(own_llm.start_llm))
        while not restart.done():
            await client.send({"type": "get_history"})
            await asyncio.wait({restart}, timeout=1.0)
        await restart
        mark = len(client.events)
        await client.send({"type": "text", "text": "Say hello again."})
        turn = await client.wait_turn(after=mark, timeout_s=240)
        assert turn.assistant_final
        assert turn.audio
        assert client.errors(after=mark) == []
        history = await client.history()
        users = [m["content"] for m in history if m["role"] == "user"]
        # The failed turn's question stays in the history (merged with the next one): nothing is lost.
        assert "Are you there?" in users[-1]
