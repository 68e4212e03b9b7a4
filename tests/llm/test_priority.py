"""The embedded engine's OS priority: its threads yield the CPU, the gate and the caller keep theirs."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from voicechat_llm import config
from voicechat_llm.engines import llamacpp
from voicechat_llm.settings import LLMSettings


class _FakeServer:
    """Stands in for ``xllamacpp.Server``: records the nice value of its constructor and of a thread it starts."""

    seen: dict[str, int] = {}

    def __init__(self, params: Any) -> None:
        _FakeServer.seen["constructor"] = llamacpp.thread_nice()
        worker = threading.Thread(target=lambda: _FakeServer.seen.update(worker=llamacpp.thread_nice()))
        worker.start()
        worker.join()


@pytest.mark.parametrize("nice", [0, 5])
async def test_engine_threads_get_the_nice_value_and_the_caller_does_not(
    nice: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp.xllamacpp, "Server", _FakeServer)
    _FakeServer.seen.clear()
    base = llamacpp.thread_nice()
    server = await llamacpp._in_own_thread(functools.partial(llamacpp._start_server, None, nice))
    assert isinstance(server, _FakeServer)
    expected = min(base + nice, 19)
    assert _FakeServer.seen == {"constructor": expected, "worker": expected}
    assert llamacpp.thread_nice() == base  # the event loop's thread (the gate) keeps its priority


def test_nice_is_checked() -> None:
    assert LLMSettings.model_validate({"nice": 10}).nice == 10
    with pytest.raises(ValidationError):
        LLMSettings.model_validate({"nice": 20})
    with pytest.raises(ValidationError):
        LLMSettings.model_validate({"nice": -1})  # raising priority needs privileges the pod does not have


def test_nice_with_vllm_is_a_configuration_error() -> None:
    settings = LLMSettings.model_validate({"engine": "vllm", "nice": 5})
    with pytest.raises(config.ConfigError, match="--nice / VOICECHAT_LLM_NICE"):
        config.plan(settings)
