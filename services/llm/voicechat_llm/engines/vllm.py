"""Production engine: ``vllm serve MODEL ...`` as a child process (GPU), watched from the event loop.

The child's death is noticed at once (a task awaits the process), not at the next health probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal

from voicechat_llm.config import StartPlan
from voicechat_llm.engines.base import Engine, EngineError
from voicechat_llm.settings import LLMSettings

log = logging.getLogger(__name__)

# vLLM's API server requires `Authorization: Bearer` on /v1/* when this is set (/health, /metrics stay open).
VLLM_API_KEY_ENV = "VLLM_API_KEY"


def build_vllm_argv(settings: LLMSettings, model: str, served_model_name: str) -> list[str]:
    """The ``vllm serve`` command line for these settings (flag names as in vLLM's engine args)."""
    argv = [
        settings.vllm_executable,
        "serve",
        model,
        "--host",
        settings.host,
        "--port",
        str(settings.engine_port),
        "--served-model-name",
        served_model_name,
        "--max-model-len",
        str(settings.max_model_len),
        "--gpu-memory-utilization",
        f"{settings.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(settings.tensor_parallel_size),
        "--enable-prefix-caching" if settings.enable_prefix_caching else "--no-enable-prefix-caching",
        # vLLM reads max_new_tokens as the server's max_tokens and serves min(request, this, room left in
        # max_model_len); --max-model-len bounds prompt + completion in every case.
        "--override-generation-config",
        json.dumps({"max_new_tokens": settings.max_tokens}),
    ]
    return [*argv, *settings.extra_args]


def vllm_env(api_key: str | None) -> dict[str, str]:
    """The child's environment: the API key goes in VLLM_API_KEY, not --api-key (argv is world-readable)."""
    env = {k: v for k, v in os.environ.items() if k != VLLM_API_KEY_ENV}
    if api_key:
        env[VLLM_API_KEY_ENV] = api_key
    return env


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, settings: LLMSettings, plan: StartPlan) -> None:
        super().__init__(settings, plan)
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def argv(self) -> list[str]:
        return build_vllm_argv(self.settings, self.plan.model, self.plan.served_model_name)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        argv = self.argv
        log.info("spawning vllm", extra={"argv": argv})
        try:
            # Own process group: a hard kill also reaches tensor-parallel workers.
            self._proc = await asyncio.create_subprocess_exec(
                *argv, start_new_session=True, env=vllm_env(self.plan.api_key)
            )
        except OSError as err:
            raise EngineError(f"could not run {argv[0]!r}: {err.strerror}") from err
        self._watcher = asyncio.create_task(self._watch(self._proc), name="vllm-watcher")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self._stopping:
            log.error("vllm child exited unexpectedly", extra={"pid": proc.pid, "exit_code": code})
        self._mark_exited(code)

    @property
    def exit_code(self) -> int | None:
        # Known as soon as the process is reaped, possibly before the watcher task has run.
        return self._proc.returncode if self._proc is not None else super().exit_code

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def stop(self, timeout_s: float) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None:
            self._mark_exited(None)
            return
        if proc.returncode is None:
            log.info("stopping vllm child", extra={"pid": proc.pid, "timeout_s": timeout_s})
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                log.warning("vllm child ignored SIGTERM; killing it", extra={"pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._watcher is not None:
            await self._watcher
        log.info("vllm child stopped", extra={"pid": proc.pid, "exit_code": proc.returncode})
