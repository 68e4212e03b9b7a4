"""Embedded engine: llama.cpp's own HTTP server, started in-process through xllamacpp (CPU).

``xllamacpp.Server(params)`` loads the model and starts listening before it returns; releasing the object
stops the server. Continuous batching runs over ``n_parallel`` slots sharing ``n_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import xllamacpp

from voicechat_common.cpus import usable_cpus
from voicechat_llm.config import StartPlan
from voicechat_llm.engines.base import Engine, EngineError
from voicechat_llm.settings import LLMSettings

log = logging.getLogger(__name__)

# llama.cpp log verbosity: 2 = errors and warnings, 3 = info, 4 = debug (its `-lv N`).
_VERBOSITY = {"debug": 4, "info": 2, "warning": 2, "error": 1}


def total_context(settings: LLMSettings) -> int:
    """KV-cache tokens for all slots, so that each conversation gets ``max_model_len``."""
    return settings.max_model_len * settings.parallel


def build_params(settings: LLMSettings, plan: StartPlan) -> Any:
    """llama.cpp server parameters from settings (``xllamacpp.CommonParams``)."""
    params = xllamacpp.CommonParams()
    params.model.path = plan.model
    params.model_alias = {plan.served_model_name}
    params.hostnames = [settings.host]
    params.port = settings.engine_port
    params.n_parallel = settings.parallel
    params.cont_batching = True
    # llama.cpp divides n_ctx among its slots; max_model_len means one request's context, as in vLLM.
    params.n_ctx = total_context(settings)
    # -1: llama.cpp uses every physical core. Prompts get every CPU the pod may use, counted by us: with -1
    # for prompts and 1 for generation this llama.cpp build processed prompts 2-3x slower than with 2 and 1.
    params.cpuparams.n_threads = settings.threads or -1
    params.cpuparams_batch.n_threads = settings.batch_threads or usable_cpus()
    for cpu in (params.cpuparams, params.cpuparams_batch):
        cpu.poll = settings.cpu_poll
    params.endpoint_metrics = True
    # /slots shows every slot's prompt and output: other clients' conversations. Off, as is POST /props
    # (changing server settings); with an API key, every endpoint but /health and /models needs it.
    params.endpoint_slots = False
    params.endpoint_props = False
    if plan.api_key:
        params.api_keys = [plan.api_key]
    # What llama.cpp enforces: a request without max_tokens generates at most this many tokens, and no
    # request outgrows its slot (max_model_len, prompt + completion: no context shift). This version does
    # not lower a larger max_tokens a request asks for; the slot size is the hard bound.
    params.n_predict = settings.max_tokens
    params.ctx_shift = False
    params.cache_prompt = True
    params.verbosity = _VERBOSITY[settings.log_level]
    return params


def thread_nice() -> int:
    """The calling thread's nice value (Linux schedules threads, so each has its own)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _start_server(params: Any, nice: int) -> Any:
    """Create the server from a thread whose nice value its threads inherit (HTTP, slots, compute).

    Runs on a thread of its own that ends afterwards: the raised nice value cannot be lowered again by an
    unprivileged process, so it must not stay on a shared worker thread (or the gate's event loop).
    """
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), thread_nice() + nice)
    return xllamacpp.Server(params)


async def _in_own_thread(fn: Callable[[], Any]) -> Any:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp-start") as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)


def _release(holder: list[Any]) -> None:
    # Dropping the last reference runs the C++ destructor, which joins the server threads.
    holder.clear()


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(self, settings: LLMSettings, plan: StartPlan) -> None:
        super().__init__(settings, plan)
        self._server: list[Any] = []  # the xllamacpp.Server, held in a list so a worker thread can drop it
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return os.getpid() if self._server else None

    async def start(self) -> None:
        params = build_params(self.settings, self.plan)
        log.info(
            "starting llama.cpp engine",
            extra={
                "model": self.plan.model,
                "port": self.settings.engine_port,
                "parallel": self.settings.parallel,
                "n_ctx": total_context(self.settings),
                "threads": self.settings.threads,
                "batch_threads": self.settings.batch_threads,
                "nice": self.settings.nice,
            },
        )
        # Loads the model and binds the port: blocking, so off the event loop.
        loading = asyncio.ensure_future(
            _in_own_thread(functools.partial(_start_server, params, self.settings.nice))
        )
        try:
            server = await asyncio.shield(loading)
        except asyncio.CancelledError:
            # A load cannot be interrupted: let it finish, then release the server it made.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_release, [await loading])
            raise
        except Exception as err:
            raise EngineError(f"llama.cpp could not load {self.plan.model}: {err}") from err
        if self._stopping:
            await asyncio.to_thread(_release, [server])
            raise EngineError("stopped while starting")
        self._server.append(server)

    def is_alive(self) -> bool:
        # In-process: the server lives exactly as long as the object does.
        return bool(self._server) and not self._stopping

    async def stop(self, timeout_s: float) -> None:
        self._stopping = True
        if not self._server:
            self._mark_exited(None)
            return
        holder = [self._server.pop()]
        try:
            await asyncio.wait_for(asyncio.to_thread(_release, holder), timeout_s)
        except TimeoutError:
            log.warning("llama.cpp engine did not stop in time", extra={"timeout_s": timeout_s})
        self._mark_exited(0)
        log.info("llama.cpp engine stopped")
