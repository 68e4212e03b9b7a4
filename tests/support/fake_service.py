"""Session service *processes* on fake backends (no weights), and a fake LLM for tests without an event loop.

For what needs real processes (SIGTERM, restarts, several pods sharing a resume key) yet no models: the
environment of :data:`tests.support.session_app.FAKE_BACKENDS` as ``VOICECHAT_SESSION_*`` variables, a
process on a fixed port that can be restarted in place, and :func:`threaded_fake_llm` serving a
:class:`~tests.support.fake_llm.FakeLLM` from its own thread (for Playwright's sync tests). ::

    with threaded_fake_llm(FakeLLM()) as api_url:
        pod = fake_session_process(api_url, log_dir, "a", resume_key=KEY)
        pod.start(); pod.wait_ready(60)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.fake_llm import FakeLLM
from tests.support.session_app import FAKE_BACKENDS
from voicechat_common.localstack import ManagedProcess, free_port
from voicechat_session.settings import ENV_PREFIX


def session_env(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as the service's environment variables (lists as JSON, as pydantic-settings reads them)."""
    env: dict[str, str] = {}
    for name, value in settings.items():
        text = (
            json.dumps(value)
            if isinstance(value, list | dict)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


def fake_session_process(
    llm_api_url: str, log_dir: Path, name: str, *, port: int | None = None, **settings: Any
) -> ManagedProcess:
    """``python -m voicechat_session`` on fake backends (not started). ``start()`` again after ``stop()``
    restarts it on the same port, as a replaced pod behind the same Service."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        name=f"voicechat-session-{name}",
        module="voicechat_session",
        ready_url=f"http://127.0.0.1:{port}/readyz",
        env=session_env(
            {**FAKE_BACKENDS, "host": "127.0.0.1", "port": port, "llm_url": llm_api_url, **settings}
        ),
        log_path=log_dir / f"session-{name}.log",
    )


def base_url(process: ManagedProcess) -> str:
    return process.ready_url.removesuffix("/readyz")


@contextlib.contextmanager
def threaded_fake_llm(llm: FakeLLM, startup_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``llm`` on its own thread and event loop; yields its API URL (``…/v1``)."""
    ready = threading.Event()
    url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with llm.serving() as api_url:
                url.append(api_url)
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="fake-llm", daemon=True)
    thread.start()
    try:
        if not ready.wait(startup_timeout_s) or failure:
            raise RuntimeError(f"the fake LLM did not start: {failure[:1]}")
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15.0)
        loop.close()


@contextlib.contextmanager
def running_fake_session(
    llm: FakeLLM, log_dir: Path, name: str, *, ready_timeout_s: float = 60.0, **settings: Any
) -> Iterator[ManagedProcess]:
    """A started :func:`fake_session_process` answering with ``llm`` (served on its own thread), stopped after."""
    with threaded_fake_llm(llm) as api_url:
        process = fake_session_process(api_url, log_dir, name, **settings)
        process.start()
        try:
            process.wait_ready(ready_timeout_s)
            yield process
        finally:
            process.stop()
