"""The local stack gives one engine API key to both services (make up generates one per run)."""

from __future__ import annotations

import pytest

from voicechat_common import localstack
from voicechat_common.localstack import LocalStack, ManagedProcess


def test_both_services_get_the_same_engine_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the environments are under test: nothing is started.
    monkeypatch.setattr(ManagedProcess, "start", lambda self: None)
    monkeypatch.setattr(ManagedProcess, "wait_ready", lambda self, timeout_s: None)
    stack = LocalStack(llm_api_key="k-123").start()
    assert stack.llm is not None
    assert stack.session is not None
    assert stack.llm.env["VOICECHAT_LLM_API_KEY"] == "k-123"
    assert stack.session.env["VOICECHAT_SESSION_LLM_API_KEY"] == "k-123"
    open_stack = LocalStack().start()
    assert open_stack.llm is not None
    assert "VOICECHAT_LLM_API_KEY" not in open_stack.llm.env


def test_make_up_generates_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[LocalStack] = []

    def fake_start_llm(self: LocalStack) -> None:
        made.append(self)
        raise KeyboardInterrupt  # stop main() right after the stack is built

    monkeypatch.delenv("VOICECHAT_LLM_API_KEY", raising=False)
    monkeypatch.setattr(LocalStack, "start_llm", fake_start_llm)
    monkeypatch.setattr(localstack.signal, "signal", lambda *_: None)  # keep pytest's own handlers
    localstack.main([])
    localstack.main([])
    keys = [stack.llm_api_key for stack in made]
    assert all(key and len(key) >= 32 for key in keys), keys
    assert keys[0] != keys[1]
