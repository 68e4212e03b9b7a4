"""The pod's open sessions: admission (with the protocol's error code for a refusal), the active-sessions
gauge, and the SIGTERM drain. It holds sessions through a small interface, so it never imports the
connection module (one direction of imports: app → connection → …, app → registry)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from voicechat_session import metrics
from voicechat_session.protocol import ErrorCode
from voicechat_session.serving import Pod

log = logging.getLogger(__name__)

Refusal = tuple[ErrorCode, str]
"""Why a new session is refused: the error code sent to the client and a readable reason."""


class Session(Protocol):
    @property
    def session_id(self) -> str: ...

    async def drain(self, grace_s: float) -> None:
        """Let the turn in progress finish within ``grace_s``, then close the session."""
        ...


class SessionRegistry:
    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.max_sessions = pod.settings.max_sessions
        self.grace_s = pod.settings.drain_grace_s
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._drain_started = False
        self.drained = asyncio.Event()

    def __len__(self) -> int:
        return len(self.sessions)

    def admission(self) -> Refusal | None:
        """None when a new session is welcome, else the refusal."""
        if self.draining:
            return "shutting_down", "draining: the service is shutting down"
        if self.pod.not_ready_reason is not None:
            return "not_ready", self.pod.not_ready_reason
        if len(self.sessions) >= self.max_sessions:
            return (
                "server_full",
                f"full: {len(self.sessions)} of max_sessions={self.max_sessions} sessions open",
            )
        return None

    def register(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        metrics.ACTIVE_SESSIONS.set(len(self.sessions))

    def unregister(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        metrics.ACTIVE_SESSIONS.set(len(self.sessions))

    async def drain(self) -> None:
        """SIGTERM: refuse new sessions, let open ones finish their turn within the grace period, close."""
        if self._drain_started:
            await self.drained.wait()
            return
        self._drain_started = True
        self.draining = True  # usually already set by the signal handler, so /readyz flips at once
        log.info("draining", extra={"sessions": len(self.sessions), "grace_s": self.grace_s})
        await asyncio.gather(*(s.drain(self.grace_s) for s in list(self.sessions.values())))
        self.drained.set()
        log.info("drained")
