"""Abusive clients for the security tests: one that stops reading, a request flood, and a polling wait."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import websockets


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def non_reading_client(ws_url: str) -> AsyncIterator[websockets.ClientConnection]:
    """A WebSocket client that stops reading at once: a tiny receive buffer and a one-frame queue, so the
    server's sends soon block on a full TCP window."""
    host, port = ws_url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await websockets.connect(ws_url, sock=sock, max_queue=1, ping_interval=None, close_timeout=0.1)
    try:
        yield ws
    finally:
        ws.transport.abort()


async def flood(ws: websockets.ClientConnection, seconds: float) -> int:
    """Send small requests with large answers (the history) until the server drops the connection."""
    sent = 0
    deadline = time.monotonic() + seconds
    with contextlib.suppress(websockets.ConnectionClosed, OSError):
        while time.monotonic() < deadline:
            for _ in range(50):
                await ws.send('{"type": "get_history"}')
                sent += 1
            await asyncio.sleep(0)
    return sent
