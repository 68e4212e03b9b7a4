"""The LLM fails in each way an OpenAI-compatible server can: the client gets an error event with the right
code, whatever arrived is still spoken, and the same session works again once the LLM does."""

from __future__ import annotations

import pytest

from tests.support.fake_llm import FakeLLM, Mode
from tests.support.inprocess import bind_ephemeral
from tests.support.session_app import metric, session_app
from tests.support.ws_client import VoiceChatClient

REPLY = "One two three four. Five six seven."


@pytest.mark.parametrize(
    ("mode", "code", "spoken"),
    [
        ("http_503", "llm_unavailable", None),
        ("http_500", "llm_error", None),
        ("error_event", "llm_error", "One two"),
        ("drop", "llm_unavailable", "One two"),
        ("stall", "llm_timeout", None),
    ],
)
async def test_llm_failure_is_reported_and_the_session_recovers(
    mode: Mode, code: str, spoken: str | None
) -> None:
    llm = FakeLLM(reply=REPLY, mode=mode)
    errors_before = metric("voicechat_session_errors_total", code=code)
    async with (
        session_app(llm, llm_first_token_timeout_s=0.5) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.send({"type": "text", "text": "Are you there?"})
        error = await client.wait_for("error", timeout_s=10)
        assert (error["code"], error["fatal"]) == (code, False)
        assert error["message"]
        turn = await client.wait_turn(timeout_s=10)
        assert not turn.metrics["interrupted"]
        # What did arrive before the failure is still spoken (a cut reply beats silence).
        assert turn.assistant_final == spoken
        assert (turn.audio != b"") == (spoken is not None)

        llm.mode = "ok"
        mark = len(client.events)
        await client.send({"type": "text", "text": "Say it again."})
        again = await client.wait_turn(after=mark, timeout_s=20)
        assert again.assistant_final == REPLY
        assert client.errors(after=mark) == []
        users = [m["content"] for m in await client.history() if m["role"] == "user"]
        if spoken is None:
            # The failed turn's question stays (merged with the next one): nothing the user said is lost.
            assert users == ["Are you there?\nSay it again."]
        else:
            assert users == ["Are you there?", "Say it again."]
    assert metric("voicechat_session_errors_total", code=code) == errors_before + 1
    assert metric("voicechat_session_llm_streams_active") == 0


async def test_llm_down_then_back_on_the_same_address() -> None:
    probe = bind_ephemeral()
    port = probe.getsockname()[1]  # an address where nothing listens yet
    probe.close()
    llm = FakeLLM(reply=REPLY)
    async with (
        session_app(llm, llm_url=f"http://127.0.0.1:{port}/v1") as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.send({"type": "text", "text": "Are you there?"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == "llm_unavailable"
        assert (await client.wait_turn(timeout_s=10)).audio == b""
        async with llm.serving(port=port):
            mark = len(client.events)
            await client.send({"type": "text", "text": "Say hello again."})
            turn = await client.wait_turn(after=mark, timeout_s=20)
            assert turn.assistant_final == REPLY
            assert turn.audio
            assert client.errors(after=mark) == []
        mark = len(client.events)
        await client.send({"type": "text", "text": "Still there?"})
        assert (await client.wait_for("error", after=mark, timeout_s=10))["code"] == "llm_unavailable"
        assert not client.closed
        assert len(service.registry) == 1
