"""``voicechat-session``: settings from the environment and CLI, structured logs, uvicorn with a drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import CliApp, SettingsError

from voicechat_common.logging import configure_logging
from voicechat_session.app import create_app
from voicechat_session.auth import AuthConfigError, TokenVerifier, startup_refusal
from voicechat_session.handshake import guarded_protocol
from voicechat_session.registry import SessionRegistry
from voicechat_session.settings import SessionSettings

log = logging.getLogger("voicechat_session")

WS_MAX_SIZE_FACTOR = 16
"""uvicorn's own frame limit, far above ``max_frame_bytes``: frames in between get a friendly error event
and the session goes on; only absurd frames hit the transport limit (close 1009)."""


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM first drains the sessions (readiness 503 at once), then exits with status 0."""

    def __init__(self, config: uvicorn.Config, registry: SessionRegistry) -> None:
        super().__init__(config)
        self.registry = registry
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is None and not self.should_exit:
            # Signal handlers run on the loop's thread between callbacks: flag now, drain in a task.
            self.registry.draining = True
            loop = asyncio.get_event_loop()
            self._drain_task = loop.create_task(self._drain_then_exit())
            return
        # A second signal: stop now (uvicorn's default behaviour, without re-raising the signal at exit).
        self.should_exit = True
        self.force_exit = sig == signal.SIGINT

    async def _drain_then_exit(self) -> None:
        try:
            await self.registry.drain()
        finally:
            self.should_exit = True


def uvicorn_config(app: FastAPI, settings: SessionSettings) -> uvicorn.Config:
    """How the service runs under uvicorn (also used by the in-process tests)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        ws_max_size=settings.max_frame_bytes * WS_MAX_SIZE_FACTOR,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        http=guarded_protocol(settings.handshake_timeout_s),
        timeout_keep_alive=min(5, int(settings.handshake_timeout_s) or 1),
        h11_max_incomplete_event_size=16 * 1024,
        server_header=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


def load_settings(argv: list[str] | None = None) -> SessionSettings:
    return CliApp.run(SessionSettings, cli_args=argv if argv is not None else sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except (ValidationError, SettingsError) as exc:
        sys.stderr.write(f"voicechat-session: invalid configuration: {_one_line(exc)}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        # Authentication is decided before anything else starts (or logs): a refusal is the only line.
        verifier = TokenVerifier(settings)
        refusal = startup_refusal(settings, verifier)
        if refusal is not None:
            sys.stderr.write(f"voicechat-session: {refusal}\n")
            return 2
        app = create_app(settings, verifier)
    except (OSError, AuthConfigError) as exc:  # e.g. an unreadable system_prompt_file or auth key
        sys.stderr.write(f"voicechat-session: invalid configuration: {_one_line(exc)}\n")
        return 2
    server = DrainingServer(uvicorn_config(app, settings), app.state.registry)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan (model loading) fails
        return int(exc.code) if isinstance(exc.code, int) else 1
    if not server.started:
        return 1
    return 0


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


if __name__ == "__main__":
    raise SystemExit(main())
