"""Serve an ASGI app with uvicorn in the test's own event loop, on an ephemeral port.

Real sockets and real async timing (WebSocket frames, SSE streams, disconnects), no subprocess: a test can
reach into the app (``app.state``) while clients talk to it. ::

    async with serve_in_process(app) as base_url:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from starlette.types import ASGIApp


class InProcessServer(uvicorn.Server):
    """uvicorn that leaves the process's signal handlers alone (pytest owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_ephemeral(port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 (``port`` 0: the kernel picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def serve_in_process(
    app: ASGIApp | None = None,
    *,
    config: uvicorn.Config | None = None,
    port: int = 0,
    startup_timeout_s: float = 30.0,
) -> AsyncIterator[str]:
    """Run ``app`` (or ``config``'s app) until the block exits; yields ``http://127.0.0.1:PORT``."""
    if config is None:
        assert app is not None
        config = uvicorn.Config(app, log_config=None, lifespan="on")
    server = InProcessServer(config)
    sock = bind_ephemeral(port)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn {base_url}")
    try:
        async with asyncio.timeout(startup_timeout_s):
            while not server.started:
                if task.done():
                    task.result()  # startup failed: raise its error
                    raise RuntimeError(f"the in-process server at {base_url} exited during startup")
                await asyncio.sleep(0.01)
        yield base_url
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15.0)
        sock.close()
