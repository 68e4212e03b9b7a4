"""Admission and drain of the session registry (no sockets: sessions are small stand-ins)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.support.session_app import FAKE_BACKENDS, metric
from voicechat_session.registry import SessionRegistry
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings


@dataclass
class StubSession:
    session_id: str
    drained_with: float | None = None

    async def drain(self, grace_s: float) -> None:
        await asyncio.sleep(0)
        self.drained_with = grace_s


async def test_admission_codes_and_drain() -> None:
    pod = Pod(SessionSettings(**FAKE_BACKENDS, max_sessions=2, drain_grace_s=7))
    registry = SessionRegistry(pod)
    try:
        assert registry.admission() == ("not_ready", "loading models")
        await pod.start()
        assert registry.admission() is None
        sessions = [StubSession("a"), StubSession("b")]
        for session in sessions:
            registry.register(session)
        assert metric("voicechat_session_active_sessions") == 2
        assert registry.admission() == ("server_full", "full: 2 of max_sessions=2 sessions open")
        registry.unregister(sessions[1])
        assert registry.admission() is None
        await asyncio.gather(registry.drain(), registry.drain())  # a second SIGTERM waits for the first
        assert sessions[0].drained_with == 7
        assert sessions[1].drained_with is None, "only open sessions are drained"
        assert registry.admission() == ("shutting_down", "draining: the service is shutting down")
        registry.unregister(sessions[0])
        assert metric("voicechat_session_active_sessions") == 0
    finally:
        await pod.close()
