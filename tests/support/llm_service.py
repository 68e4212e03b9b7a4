"""Start the real ``voicechat-llm`` as a subprocess on free ports, and small HTTP helpers for its tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from voicechat_common.localstack import ManagedProcess, free_port
from voicechat_llm.config import embedded_model_path
from voicechat_llm.metrics import count_in_flight
from voicechat_llm.settings import ENV_PREFIX

START_TIMEOUT_S = 180.0


@dataclass
class LLMServiceProcess:
    proc: ManagedProcess
    engine_port: int
    gate_port: int

    @property
    def gate_url(self) -> str:
        return f"http://127.0.0.1:{self.gate_port}"

    @property
    def engine_url(self) -> str:
        return f"http://127.0.0.1:{self.engine_port}"

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def warmup_report(self) -> dict[str, Any]:
        response = httpx.get(f"{self.gate_url}/warmup", timeout=10)
        result: dict[str, Any] = response.json()
        return result

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.wait(timeout_s)


def service_env() -> dict[str, str]:
    """Environment without any VOICECHAT_LLM_* leaking in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def launch(log_path: Path, *args: str, env: dict[str, str] | None = None) -> LLMServiceProcess:
    """Start the service (not waiting for readiness) with console logs in ``log_path``."""
    engine_port, gate_port = free_port(), free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)  # one run per log file
    proc = ManagedProcess(
        name="voicechat-llm",
        module="voicechat_llm",
        ready_url=f"http://127.0.0.1:{gate_port}/readyz",
        env={**(env or {}), "HF_HUB_OFFLINE": "1"},
        args=[
            "--host",
            "127.0.0.1",
            "--engine-port",
            str(engine_port),
            "--gate-port",
            str(gate_port),
            "--log-format",
            "console",
            *args,
        ],
        log_path=log_path,
    )
    proc.start()
    return LLMServiceProcess(proc=proc, engine_port=engine_port, gate_port=gate_port)


@contextmanager
def running_service(
    log_path: Path, *args: str, ready: bool = True, env: dict[str, str] | None = None
) -> Iterator[LLMServiceProcess]:
    """A started service, stopped (SIGTERM, then SIGKILL) on exit; waits for /readyz 200 if ``ready``."""
    service = launch(log_path, *args, env=env)
    try:
        if ready:
            service.proc.wait_ready(START_TIMEOUT_S)
        yield service
    finally:
        service.proc.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def status(url: str, timeout_s: float = 5) -> int | None:
    """HTTP status of GET url, None when nothing answers."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m voicechat_llm ARGS`` to completion (for configuration errors)."""
    return subprocess.run(
        [sys.executable, "-m", "voicechat_llm", *args],
        env={**service_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def model_path() -> str:
    return str(embedded_model_path())


def chat_body(user: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    from voicechat_llm.settings import DEFAULT_SYSTEM_PROMPT
    from voicechat_llm.warmup import chat_messages

    return {
        "messages": chat_messages(DEFAULT_SYSTEM_PROMPT, user),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }


def bearer(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def engine_client(timeout_s: float, api_key: str | None = None) -> httpx.AsyncClient:
    """A client for the engine without keep-alive (llama.cpp drops idle connections without notice)."""
    return httpx.AsyncClient(
        timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=0), headers=bearer(api_key)
    )


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, engine_url: str, body: dict[str, Any]
) -> AsyncIterator[AsyncIterator[str]]:
    """A streaming chat completion yielding its content deltas."""
    from voicechat_llm.warmup import chunk_content, parse_sse_data

    async with client.stream("POST", f"{engine_url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()

        async def deltas() -> AsyncIterator[str]:
            async for line in response.aiter_lines():
                chunk = parse_sse_data(line)
                if chunk is not None and (content := chunk_content(chunk)):
                    yield content

        yield deltas()


def slots_busy(engine_url: str, api_key: str | None = None) -> int:
    """Requests llama.cpp is processing, from its metrics (/slots is off: it shows other clients' text)."""
    response = httpx.get(f"{engine_url}/metrics", timeout=5, headers=bearer(api_key))
    response.raise_for_status()
    busy = count_in_flight(response.text)
    assert busy is not None, "the engine exports no in-flight gauge"
    return busy
