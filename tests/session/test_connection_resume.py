"""Resumable sessions in-process (fake backends, a recording fake LLM): tokens after turns, resume on another
connection or another pod sharing the key, every token failure (a fresh session, never a crash, never someone
else's history), and the drain handing each client its latest token before "going away"."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import SCRIPT, InProcessService, metric, session_app
from tests.support.ws_client import VoiceChatClient
from voicechat_session.backends.fake import utterance_tone
from voicechat_session.protocol import CloseCode
from voicechat_session.resume import KeyRing, ResumeCodec, ResumeTurn

KEY = "k" * 40
OTHER_KEY = "o" * 40
LONG_REPLY = " ".join(f"Part {i} of a reply that takes a while to speak." for i in range(8))


async def _say(client: VoiceChatClient, text: str) -> dict[str, Any]:
    """A typed turn; returns the resume token message sent after it."""
    mark = len(client.events)
    await client.send({"type": "text", "text": text})
    await client.wait_turn(after=mark, timeout_s=20)
    return await client.wait_for("resume_token", after=mark, timeout_s=5)


async def _resume(client: VoiceChatClient, token: str, **start: Any) -> dict[str, Any]:
    mark = len(client.events)
    await client.send({"type": "start", "sample_rate": 16_000, "resume_token": token, **start})
    resumed = await client.wait_for("resumed", after=mark, timeout_s=5)
    await client.wait_for("started", after=mark, timeout_s=5)
    return resumed


async def _llm_history(service: InProcessService, client: VoiceChatClient, text: str) -> list[dict[str, str]]:
    """The messages the LLM receives for a new turn."""
    before = len(service.llm.requests)
    await _say(client, text)
    assert len(service.llm.requests) == before + 1
    messages: list[dict[str, str]] = service.llm.requests[-1]["messages"]
    return messages


async def test_tokens_after_ready_and_every_turn() -> None:
    async with session_app(resume_key=KEY) as service, VoiceChatClient.connect(service.ws_url) as client:
        assert client.ready is not None
        assert client.ready["resume_token"].startswith("v1.")
        first = await _say(client, "My name is Ada.")
        second = await _say(client, "I live in Paris.")
        assert first["token"] != second["token"]
        assert first["expires_in_s"] == service.settings.resume_ttl_s
        assert "Ada" not in second["token"]


async def test_resume_restores_history_and_voice_and_the_llm_sees_it() -> None:
    llm = FakeLLM(reply="Nice to meet you.")
    async with session_app(llm, resume_key=KEY) as service:
        async with VoiceChatClient.connect(service.ws_url) as first:
            voice = service.pod.voices[-1]
            await first.send({"type": "configure", "voice": voice, "speed": 1.3})
            await _say(first, "My name is Ada.")
            token = (await _say(first, "I live in Paris."))["token"]
            conversation = first.ready["session_id"] if first.ready else None
        ok_before = metric("voicechat_session_resumes_total", outcome="ok")
        async with VoiceChatClient.connect(service.ws_url) as second:
            resumed = await _resume(second, token)
            assert resumed["resumed"] is True
            assert resumed["error"] is None
            assert resumed["session_id"] == conversation
            assert [m["content"] for m in resumed["messages"]] == [
                "My name is Ada.",
                "Nice to meet you.",
                "I live in Paris.",
                "Nice to meet you.",
            ]
            started = await second.wait_for("started")
            assert (started["voice"], started["speed"]) == (voice, 1.3)
            await second.wait_for("resume_token", timeout_s=5)  # a fresh token for the resumed session
            messages = await _llm_history(service, second, "What is my name?")
        assert metric("voicechat_session_resumes_total", outcome="ok") == ok_before + 1
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert messages[1]["content"] == "My name is Ada."
        assert messages[-1]["content"] == "What is my name?"


async def test_voice_in_start_wins_over_the_restored_one() -> None:
    async with session_app(resume_key=KEY) as service:
        async with VoiceChatClient.connect(service.ws_url) as first:
            await first.send({"type": "configure", "speed": 1.5})
            token = (await first.wait_for("resume_token", timeout_s=5))["token"]
        async with VoiceChatClient.connect(service.ws_url) as second:
            await _resume(second, token, speed=0.8)
            assert (await second.wait_for("started"))["speed"] == 0.8


async def test_another_pod_with_the_same_key_resumes() -> None:
    llm = FakeLLM(reply="Hello Ada.")
    async with session_app(llm, resume_key=KEY) as pod_a, session_app(llm, resume_key=KEY) as pod_b:
        async with VoiceChatClient.connect(pod_a.ws_url) as client:
            token = (await _say(client, "My name is Ada."))["token"]
        async with VoiceChatClient.connect(pod_b.ws_url) as client:
            assert (await _resume(client, token))["resumed"] is True
            messages = await _llm_history(pod_b, client, "What is my name?")
        assert messages[1:3] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
        ]


async def test_previous_key_still_resumes_after_a_rotation() -> None:
    async with session_app(resume_key=OTHER_KEY) as old:
        async with VoiceChatClient.connect(old.ws_url) as client:
            token = (await _say(client, "My name is Ada."))["token"]
        async with (
            session_app(resume_key=KEY, resume_previous_key=OTHER_KEY) as rotated,
            VoiceChatClient.connect(rotated.ws_url) as client,
        ):
            assert (await _resume(client, token))["resumed"] is True
            fresh = (await client.wait_for("resume_token", timeout_s=5))["token"]
            assert fresh.split(".")[1] == KeyRing(KEY).current_kid


def _tampered(token: str) -> str:
    header, body = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[len(raw) // 2] ^= 0x40
    return f"{header}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def _expired(token_ttl_key: str) -> str:
    codec = ResumeCodec(
        KeyRing(token_ttl_key),
        ttl_s=60,
        max_frame_bytes=64_000,
        history_max_messages=24,
        history_max_chars=8000,
    )
    return codec.seal(session_id="someone", voice="x", speed=1.0, history=[], now=0.0)


def _foreign(history: str) -> str:
    codec = ResumeCodec(
        KeyRing(OTHER_KEY), ttl_s=60, max_frame_bytes=64_000, history_max_messages=24, history_max_chars=8000
    )
    return codec.seal(
        session_id="someone", voice="x", speed=1.0, history=[ResumeTurn(role="user", content=history)]
    )


@pytest.mark.parametrize("failure", ["expired", "invalid", "foreign_key", "oversized", "malformed"])
async def test_every_token_failure_gives_a_fresh_session(failure: str) -> None:
    async with session_app(FakeLLM(reply="Fresh."), resume_key=KEY) as service:
        async with VoiceChatClient.connect(service.ws_url) as victim:
            secret = (await _say(victim, "My password is swordfish."))["token"]
        token = {
            "expired": _expired(KEY),
            "invalid": _tampered(secret),  # someone else's token, altered
            "foreign_key": _foreign("My password is swordfish."),
            "oversized": "v1.x." + "A" * 63_000,
            "malformed": "not a token at all",
        }[failure]
        before = metric("voicechat_session_resumes_total", outcome=failure)
        async with VoiceChatClient.connect(service.ws_url) as client:
            resumed = await _resume(client, token)
            assert resumed["resumed"] is False
            assert resumed["error"] == failure
            assert resumed["message"]
            assert resumed["messages"] == []
            assert client.ready is not None
            assert resumed["session_id"] == client.ready["session_id"]  # its own, fresh session
            # Not fatal: the session works, and starts with nothing of anyone's conversation.
            messages = await _llm_history(service, client, "Hello?")
            assert [m["role"] for m in messages] == ["system", "user"]
            assert all("swordfish" not in m["content"] for m in messages)
            assert not client.closed
        assert metric("voicechat_session_resumes_total", outcome=failure) == before + 1


async def test_resume_after_the_first_turn_is_refused_without_mixing_histories() -> None:
    async with session_app(resume_key=KEY) as service:
        async with VoiceChatClient.connect(service.ws_url) as first:
            token = (await _say(first, "My name is Ada."))["token"]
        async with VoiceChatClient.connect(service.ws_url) as second:
            await _say(second, "My name is Bob.")
            resumed = await _resume(second, token)
            assert resumed["resumed"] is False
            assert resumed["error"] == "invalid"
            messages = await _llm_history(service, second, "Who am I?")
            assert "Ada" not in " ".join(m["content"] for m in messages)


async def test_reset_issues_a_token_of_the_empty_conversation() -> None:
    async with session_app(resume_key=KEY) as service:
        async with VoiceChatClient.connect(service.ws_url) as client:
            await _say(client, "My name is Ada.")
            mark = len(client.events)
            await client.send({"type": "reset"})
            await client.wait_for("history_cleared", after=mark, timeout_s=5)
            token = (await client.wait_for("resume_token", after=mark, timeout_s=5))["token"]
        async with VoiceChatClient.connect(service.ws_url) as client:
            resumed = await _resume(client, token)
            assert resumed["resumed"] is True
            assert resumed["messages"] == []


async def test_drain_hands_over_the_latest_token_then_goes_away() -> None:
    llm = FakeLLM(reply="Got it, Ada.", token_delay_s=0.05)
    async with session_app(llm, resume_key=KEY, drain_grace_s=30) as service:
        async with VoiceChatClient.connect(service.ws_url) as client:
            await _say(client, "My name is Ada.")
            mark = len(client.events)
            await client.send({"type": "text", "text": "I live in Paris."})
            await client.wait_for("assistant", final=False, after=mark, timeout_s=10)  # mid-turn
            service.registry.draining = True
            await asyncio.wait_for(service.registry.drain(), 20)
            code, _ = await client.wait_closed(timeout_s=10)
            assert code == CloseCode.GOING_AWAY
            turn = client.turn_result(2)
            assert not turn.metrics["interrupted"]  # the turn in flight finished within the grace
            tokens = [
                e for e in client.events[mark:] if isinstance(e, dict) and e.get("type") == "resume_token"
            ]
            last = tokens[-1]["token"]
        # Another pod (same key) continues with both turns.
        async with session_app(llm, resume_key=KEY) as other, VoiceChatClient.connect(other.ws_url) as client:
            resumed = await _resume(client, last)
            assert [m["content"] for m in resumed["messages"] if m["role"] == "user"] == [
                "My name is Ada.",
                "I live in Paris.",
            ]


async def test_drain_waits_for_the_utterance_under_way_and_answers_it() -> None:
    rate = 16_000
    async with session_app(FakeLLM(reply="Noted."), resume_key=KEY, drain_grace_s=30) as service:
        async with VoiceChatClient.connect(service.ws_url) as client:
            await client.start(sample_rate=rate)
            tone = utterance_tone(0, 1.2, rate)
            half = tone.size // 2
            await client.stream_audio(tone[:half], rate)  # the person is mid-sentence …
            await client.wait_for("vad", speaking=True, timeout_s=10)
            service.registry.draining = True
            drain = asyncio.create_task(service.registry.drain())

            # … and finishes it while the pod drains: the utterance is answered, not refused.
            async def finish_sentence() -> None:
                # An open microphone: silence goes on until the server closes.
                with contextlib.suppress(ConnectionClosed):
                    await client.stream_audio(tone[half:], rate, trailing_silence_s=5.0)

            mic = asyncio.create_task(finish_sentence())
            turn = await client.wait_turn(timeout_s=20)
            assert turn.transcript == SCRIPT[0]
            assert turn.assistant_final == "Noted."
            code, _ = await client.wait_closed(timeout_s=10)
            assert code == CloseCode.GOING_AWAY
            await asyncio.wait_for(drain, 10)
            await asyncio.wait_for(mic, 10)
            assert [e["code"] for e in client.errors() if not e["fatal"]] == []
            last = [e for e in client.events if isinstance(e, dict) and e.get("type") == "resume_token"][-1]
        async with session_app(resume_key=KEY) as other, VoiceChatClient.connect(other.ws_url) as client:
            resumed = await _resume(client, last["token"])
            assert [m["content"] for m in resumed["messages"]] == [SCRIPT[0], "Noted."]
