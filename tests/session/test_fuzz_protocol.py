"""Property-based fuzzing of the WebSocket protocol (issue 13) against the in-process service: Hypothesis
generates message sequences (valid and invalid JSON shapes, binary frames of any length) and access tokens.
Whatever arrives, the server answers with protocol messages only, closes (if at all) with a documented close
code, keeps other sessions working, and unregisters every session afterwards. Bounded: a few dozen examples,
no deadline per example (the machine is shared), seconds in all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.session_app import InProcessService, session_app
from voicechat_session import auth
from voicechat_session.protocol import CloseCode, server_message_adapter

KEY = "f" * 40
CLOSE_CODES = {v for k, v in vars(CloseCode).items() if k.isupper()} | {1000, 1005, 1006}
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
message_types = st.sampled_from(
    ["start", "text", "interrupt", "reset", "configure", "get_history", "auth", "dance", ""]
)
shaped = st.builds(
    lambda kind, fields: json.dumps({"type": kind, **fields}),
    message_types,
    st.dictionaries(
        st.sampled_from(["text", "sample_rate", "voice", "speed", "token", "extra"]), json_values, max_size=3
    ),
)
frames = st.lists(
    st.one_of(
        shaped,
        json_values.map(json.dumps),
        st.text(max_size=200),
        st.binary(max_size=4000),
        st.just('{"type": "start", "sample_rate": 16000}'),
        st.just('{"type": "text", "text": "hello"}'),
    ),
    min_size=1,
    max_size=25,
)


@pytest.fixture(scope="module")
def service() -> Iterator[InProcessService]:
    """One service for all examples, on its own event loop in a thread (Hypothesis tests are sync)."""
    loop = asyncio.new_event_loop()
    ready: list[InProcessService] = []
    stop = asyncio.Event()

    async def serve() -> None:
        async with session_app(auth_key=KEY, auth_timeout_s=1.0, max_turns_per_min=1000) as running:
            ready.append(running)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not ready:
        assert thread.is_alive(), "the service did not start"
        assert time.monotonic() < deadline, "the service did not start in 60 s"
        time.sleep(0.05)
    yield ready[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)


def _subprotocols(subject: str = "fuzz") -> list[str]:
    return ["voicechat", f"token.{auth.mint_token(KEY.encode(), subject)}"]


async def _exchange(url: str, sequence: list[str | bytes], **options: Any) -> tuple[list[Any], int | None]:
    received: list[Any] = []
    async with websockets.connect(url, max_size=2**24, **options) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            for frame in sequence:
                await ws.send(frame)
            await ws.send('{"type": "get_history"}')
            async with asyncio.timeout(15):
                async for message in ws:
                    received.append(message)
                    if isinstance(message, str) and json.loads(message)["type"] == "history":
                        break
        await ws.close()
        return received, ws.close_code


def _check(received: list[Any], close_code: int | None) -> None:
    for message in received:
        if isinstance(message, str):
            server_message_adapter.validate_json(message)  # only protocol messages come back
    assert close_code in CLOSE_CODES


async def _wait_empty(service: InProcessService) -> None:
    deadline = time.monotonic() + 15
    while len(service.registry):  # the service's own loop unregisters; this one only looks
        assert time.monotonic() < deadline, "sessions left registered"
        await asyncio.sleep(0.05)


@given(sequence=frames)
@EXAMPLES
def test_any_message_sequence_is_answered_or_refused_cleanly(
    service: InProcessService, sequence: list[str | bytes]
) -> None:
    async def run() -> None:
        received, code = await _exchange(service.ws_url, sequence, subprotocols=_subprotocols())
        _check(received, code)
        # The service still serves a well-behaved client, and nothing is left registered.
        ok, _ = await _exchange(service.ws_url, [], subprotocols=_subprotocols("other"))
        assert any(isinstance(m, str) and json.loads(m)["type"] == "history" for m in ok)
        await _wait_empty(service)

    asyncio.run(run())


@given(token=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.hex())))
@EXAMPLES
def test_any_token_is_refused_cleanly(service: InProcessService, token: str) -> None:
    async def run() -> None:
        received, code = await _exchange(service.ws_url, [json.dumps({"type": "auth", "token": token})])
        _check(received, code)
        types = [json.loads(m)["type"] for m in received if isinstance(m, str)]
        assert "ready" not in types
        assert code == CloseCode.UNAUTHORIZED
        await _wait_empty(service)

    asyncio.run(run())
