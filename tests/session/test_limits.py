"""Pod limits on a dedicated service process: a full pod refuses the next connection, idle and old sessions
are closed with their own codes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.session.conftest import SessionService, sample, session_service, wait_until
from tests.support.ws_client import VoiceChatClient
from voicechat_common.localstack import LocalStack
from voicechat_session.protocol import CloseCode

pytestmark = pytest.mark.models

IDLE_TIMEOUT_S = 2.5
MAX_SESSION_S = 8.0


@pytest.fixture(scope="module")
def limited(stack: LocalStack, session_logs: Path) -> Iterator[SessionService]:
    env = {
        "max_sessions": "1",
        "idle_timeout_s": str(IDLE_TIMEOUT_S),
        "max_session_s": str(MAX_SESSION_S),
        "partial_transcripts": "false",
    }
    with session_service(stack.llm_api_url, stack.llm_gate_url, session_logs, "limits", env) as service:
        yield service


async def test_full_pod_refuses_the_next_connection(limited: SessionService) -> None:
    assert limited.get("/readyz").status_code == 200
    async with VoiceChatClient.connect(limited.ws_url) as first:
        assert first.ready is not None
        metrics = await asyncio.to_thread(limited.metrics)
        assert sample(metrics, "voicechat_session_active_sessions") == 1
        readyz = await asyncio.to_thread(limited.get, "/readyz")
        assert readyz.status_code == 503
        assert "full" in readyz.json()["reason"]
        async with VoiceChatClient.connect(limited.ws_url, wait_ready=False) as second:
            error = await second.wait_for("error", timeout_s=15)
            assert error["code"] == "server_full"
            assert error["fatal"] is True
            code, reason = await second.wait_closed(timeout_s=15)
            assert code == CloseCode.TRY_AGAIN_LATER
            assert reason
            assert not any(isinstance(e, dict) and e["type"] == "ready" for e in second.events)
        # The first session is unaffected; the refusal is counted.
        assert await first.history()
        metrics = await asyncio.to_thread(limited.metrics)
        assert sample(metrics, "voicechat_session_refused_total", reason="server_full") == 1
        assert sample(metrics, "voicechat_session_errors_total", code="server_full") == 1
    await asyncio.to_thread(
        wait_until,
        lambda: limited.get("/readyz").status_code == 200,
        15,
        "/readyz back to 200 once a slot frees",
    )


async def test_idle_session_is_closed(limited: SessionService) -> None:
    async with VoiceChatClient.connect(limited.ws_url) as client:
        code, _reason = await client.wait_closed(timeout_s=IDLE_TIMEOUT_S + 15)
        assert code == CloseCode.IDLE_TIMEOUT
        assert client.errors()[-1]["code"] == "idle_timeout"
        assert client.errors()[-1]["fatal"] is True


async def test_old_session_is_closed(limited: SessionService) -> None:
    async with VoiceChatClient.connect(limited.ws_url) as client:
        # Keep it busy (not idle) until it reaches its maximum age.
        while not client.closed:
            await client.send({"type": "get_history"})
            await asyncio.sleep(0.5)
        assert client.close_code == CloseCode.SESSION_EXPIRED
        assert client.errors()[-1]["code"] == "session_expired"
