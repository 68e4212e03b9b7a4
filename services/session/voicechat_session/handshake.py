"""A request-head deadline for uvicorn: a connection that has not sent a complete HTTP request head within
``handshake_timeout_s`` of connecting is dropped (slowloris: half-open upgrades otherwise stay forever, since
uvicorn's ``timeout_keep_alive`` only runs between requests)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from voicechat_session import metrics


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on the first request head."""

    handshake_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_seen = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.handshake_timeout_s, self._head_timeout
        )

    def on_headers_complete(self) -> None:
        self._head_seen = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._head_seen or self.transport.is_closing():
            return
        metrics.SLOW_HANDSHAKES_TOTAL.inc()
        self.transport.abort()


def guarded_protocol(timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this deadline."""
    attrs: dict[str, Any] = {"handshake_timeout_s": timeout_s}
    return type("GuardedHttpTools", (GuardedHttpToolsProtocol,), attrs)
