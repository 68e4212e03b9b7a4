"""The service: engine + gate in one event loop, warm-up before readiness, drain on SIGTERM.

Lifecycle: gate up (503) → engine start → health wait (deadline) → warm-up generations → ready →
periodic health probes and an engine-death watcher → SIGTERM: 503 at once, bounded drain, engine stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Generator

import httpx
import uvicorn

from voicechat_llm.config import StartPlan
from voicechat_llm.engines import Engine, EngineError, create_engine
from voicechat_llm.gate import GateState, HealthChange, Phase, create_gate_app
from voicechat_llm.metrics import GateMetrics
from voicechat_llm.report import WarmupReport
from voicechat_llm.settings import LLMSettings
from voicechat_llm.warmup import WarmupError, run_warmup, warm_figures

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.2


class _GateServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LLMService:
    def __init__(self, settings: LLMSettings, plan: StartPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.engine: Engine = create_engine(settings, plan)
        metrics = GateMetrics(plan.engine, plan.served_model_name)
        report = WarmupReport(
            engine=plan.engine,
            model=plan.model,
            served_model_name=plan.served_model_name,
            engine_url=self.engine.base_url,
            system_prompt_sha256=plan.system_prompt_sha256,
            max_warm_ttft_s=settings.max_warm_ttft_s,
        )
        self.state = GateState(report=report, metrics=metrics, max_warm_ttft_s=settings.max_warm_ttft_s)
        self._stop_requested = asyncio.Event()
        self._stopping = False

    # -- signals -------------------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        if self._stop_requested.is_set():
            log.info("already stopping", extra={"signal": signal.Signals(signum).name})
            return
        log.info("stop requested: not ready from now on", extra={"signal": signal.Signals(signum).name})
        self.state.drain()
        self._stop_requested.set()

    # -- run -----------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a clean stop. Raises EngineError/WarmupError on failed start."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        timeout = httpx.Timeout(
            self.settings.health_timeout_s, read=max(120.0, self.settings.health_timeout_s)
        )
        # No keep-alive: llama.cpp's HTTP server closes idle connections without notice, and a request
        # on such a stale connection fails ("disconnected without sending a response") — a false alarm
        # for a health probe. A fresh loopback connection per request costs well under a millisecond.
        limits = httpx.Limits(max_keepalive_connections=0)
        # The service's own engine requests (health, metrics, warm-up) carry the engine's API key.
        headers = self.plan.auth_headers()
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
            gate, gate_task = await self._start_gate(client)
            try:
                return await self._run_engine(client)
            finally:
                gate.should_exit = True
                await gate_task

    async def _start_gate(self, client: httpx.AsyncClient) -> tuple[_GateServer, asyncio.Task[None]]:
        app = create_gate_app(self.state, lambda: self._live_check(client))
        config = uvicorn.Config(
            app,
            host=self.settings.host,
            port=self.settings.gate_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = _GateServer(config)
        task = asyncio.create_task(server.serve(), name="gate")
        while not server.started:
            if task.done():
                # uvicorn reports bind failures by exiting; say it in one line.
                with contextlib.suppress(BaseException):
                    task.result()
                raise EngineError(
                    f"the gate could not listen on {self.settings.host}:{self.settings.gate_port}"
                )
            await asyncio.sleep(0.02)
        log.info("gate listening", extra={"url": f"http://{self.settings.host}:{self.settings.gate_port}"})
        return server, task

    async def _live_check(self, client: httpx.AsyncClient) -> str | None:
        if self.state.engine_dead:
            return self.state.engine_error
        if self.state.phase is Phase.STARTING:
            # Loading can take minutes (vLLM) and cannot be probed yet; a death during it ends the process.
            return None
        return await self.engine.probe(client, self.settings.health_timeout_s)

    async def _run_engine(self, client: httpx.AsyncClient) -> int:
        watchers = [asyncio.create_task(self._watch_engine(), name="engine-watch")]
        try:
            if not await self._start_or_stop(client):
                return 0
            watchers.append(asyncio.create_task(self._health_loop(client), name="health"))
            await self._stop_requested.wait()
            await self._drain(client)
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await self._stop_engine()
        log.info("stopped cleanly")
        return 0

    async def _start_or_stop(self, client: httpx.AsyncClient) -> bool:
        """Start and warm the engine; False if a stop signal came first. Start failures raise."""
        startup = asyncio.create_task(self._startup(client), name="startup")
        stop = asyncio.create_task(self._stop_requested.wait(), name="stop-requested")
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not startup.done():
            log.info("stop requested during start-up")
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineError, WarmupError, httpx.HTTPError):
                await startup
            return False
        try:
            startup.result()
        except (EngineError, WarmupError, httpx.HTTPError) as err:
            self.state.start_failed(str(err))
            if isinstance(err, httpx.HTTPError):
                raise WarmupError(f"warm-up request failed: {type(err).__name__} {err}") from err
            raise
        return True

    async def _startup(self, client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        await self.engine.start()
        self.state.engine_started(self.engine.pid)
        await self.engine.wait_healthy(client, started + self.settings.startup_timeout_s)
        load_seconds = time.monotonic() - started
        self.state.engine_healthy(load_seconds)
        log.info("engine healthy; warming up", extra={"load_seconds": round(load_seconds, 3)})
        samples = await run_warmup(
            client,
            self.engine.base_url,
            self.plan.served_model_name,
            self.plan.system_prompt,
            self.settings.warmup_user_prompt,
            self.settings.warmup_requests,
            self.settings.warmup_max_tokens,
        )
        warm_ttft, warm_rate = warm_figures(samples)
        self.state.warmed(samples, warm_ttft, warm_rate, time.monotonic() - started)
        report = self.state.report
        log.info(
            "warm-up done" if report.ready else "warm-up done but not ready",
            extra={
                "warmup_seconds": round(report.warmup_seconds or 0.0, 3),
                "warm_ttft_s": round(warm_ttft, 4),
                "warm_tokens_per_s": None if warm_rate is None else round(warm_rate, 1),
                "ready": report.ready,
                "reason": report.reason,
            },
        )

    async def _watch_engine(self) -> None:
        """Flip to dead the moment the engine exits (a vLLM child is awaited, not polled)."""
        code = await self.engine.wait_exited()
        if self._stopping:
            return
        self.state.engine_exited(f"{self.engine.name} engine exited with code {code}")
        log.error("engine died: liveness and readiness now fail", extra={"exit_code": code})

    async def _health_loop(self, client: httpx.AsyncClient) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            reason = await self.engine.probe(client, self.settings.health_timeout_s)
            change = self.state.health_checked(reason)
            if change is HealthChange.FAILING:
                log.warning("engine health check failed: not ready", extra={"reason": reason})
            elif change is HealthChange.RECOVERED:
                log.info("engine answers again: ready")

    async def _drain(self, client: httpx.AsyncClient) -> None:
        """Give in-flight requests up to drain_timeout_s to finish (the engine reports how many run)."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        started = time.monotonic()
        while self.engine.is_alive():
            in_flight = await self.engine.in_flight(client)
            if in_flight is None:
                log.warning("engine does not report in-flight requests: not draining")
                return
            if in_flight == 0:
                log.info("drained", extra={"seconds": round(time.monotonic() - started, 3)})
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "drain timeout: stopping with requests in flight",
                    extra={"in_flight": in_flight, "drain_timeout_s": self.settings.drain_timeout_s},
                )
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def _stop_engine(self) -> None:
        self._stopping = True
        await self.engine.stop(self.settings.engine_stop_timeout_s)


def run_service(settings: LLMSettings, plan: StartPlan) -> int:
    async def _main() -> int:
        return await LLMService(settings, plan).run()

    return asyncio.run(_main())
