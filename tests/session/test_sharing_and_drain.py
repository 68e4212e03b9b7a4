"""``sharing=connection`` (the design's "before": weights loaded per connection) and the SIGTERM drain, on a
dedicated service process (the drain test stops it, so it runs last)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.session.conftest import SessionService, sample, session_service, wait_until
from tests.support.speech import is_silent
from tests.support.ws_client import VoiceChatClient
from voicechat_common.localstack import LocalStack
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE, CloseCode

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def per_connection(stack: LocalStack, session_logs: Path) -> Iterator[SessionService]:
    env = {"sharing": "connection", "drain_grace_s": "60", "llm_max_tokens": "40"}
    with session_service(
        stack.llm_api_url, stack.llm_gate_url, session_logs, "per-connection", env
    ) as service:
        yield service


async def test_connection_sharing_loads_per_connection_and_is_slower(
    per_connection: SessionService, pod_service: SessionService
) -> None:
    async with VoiceChatClient.connect(pod_service.ws_url) as pod_client:
        assert pod_client.ready is not None
        pod_connect_ms = pod_client.ready["connect_ms"]
    loads_before = sample(per_connection.metrics(), "voicechat_session_model_loads_total", scope="connection")
    async with VoiceChatClient.connect(per_connection.ws_url, timeout_s=120) as client:
        assert client.ready is not None
        assert client.ready["sharing"] == "connection"
        connect_ms = client.ready["connect_ms"]
        await client.send({"type": "text", "text": "Say hello."})
        turn = await client.wait_turn(timeout_s=240)
        assert turn.assistant_final
        assert not is_silent(turn.audio_samples, OUTPUT_SAMPLE_RATE)
    after = per_connection.metrics()
    assert sample(after, "voicechat_session_model_loads_total", scope="connection") == loads_before + 1
    assert sample(after, "voicechat_session_model_loads_total", scope="pod") == 0
    # Loading weights takes (hundreds of) milliseconds at least; a pod-shared connect takes about one.
    assert connect_ms > 100
    assert connect_ms > 10 * pod_connect_ms, (connect_ms, pod_connect_ms)


async def test_sigterm_drains_open_sessions(per_connection: SessionService) -> None:
    process = per_connection.process
    assert process.proc is not None
    async with VoiceChatClient.connect(per_connection.ws_url, timeout_s=120) as client:
        await client.send({"type": "text", "text": "Say hello."})
        await client.wait_for("assistant", final=False, timeout_s=240)  # a turn is in progress
        process.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            lambda: per_connection.get("/readyz").status_code == 503,
            5,
            "/readyz 503 after SIGTERM",
        )
        assert "draining" in per_connection.get("/readyz").json()["reason"]
        async with VoiceChatClient.connect(per_connection.ws_url, wait_ready=False) as late:
            assert (await late.wait_for("error", timeout_s=15))["code"] == "shutting_down"
            code, _ = await late.wait_closed(timeout_s=15)
            assert code == CloseCode.GOING_AWAY
        # The turn in progress finishes, then the session is closed with 1001 and a reason.
        turn = await client.wait_turn(timeout_s=60)
        assert not turn.metrics["interrupted"]
        assert turn.audio_seconds > 0
        code, reason = await client.wait_closed(timeout_s=30)
        assert code == CloseCode.GOING_AWAY
        assert reason
        assert client.errors()[-1]["code"] == "shutting_down"
    exit_code = await asyncio.to_thread(process.proc.wait, 60)
    assert exit_code == 0
    assert time.monotonic() - signalled < 60
