"""The one small interface both engines implement, and the HTTP checks they share."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import ClassVar

import httpx

from voicechat_llm.config import StartPlan
from voicechat_llm.metrics import count_in_flight
from voicechat_llm.settings import LLMSettings

HEALTH_POLL_S = 0.25


class EngineError(RuntimeError):
    """The engine failed to start, died, or missed its deadline. The message is one line."""


class Engine(ABC):
    """An OpenAI-compatible server on ``settings.engine_port`` that clients call directly."""

    name: ClassVar[str]

    def __init__(self, settings: LLMSettings, plan: StartPlan) -> None:
        self.settings = settings
        self.plan = plan
        self._exited = asyncio.Event()
        self._exit_code: int | None = None

    @property
    def base_url(self) -> str:
        return self.plan.engine_url(self.settings.engine_port)

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/health"

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The process serving the engine (None before start)."""

    @abstractmethod
    async def start(self) -> None:
        """Begin starting the engine; may return before it answers (see :meth:`wait_healthy`)."""

    @abstractmethod
    def is_alive(self) -> bool:
        """The engine exists and has not exited (it may still be loading)."""

    @abstractmethod
    async def stop(self, timeout_s: float) -> None:
        """Stop the engine; forcefully after ``timeout_s``. Idempotent."""

    @property
    def exit_code(self) -> int | None:
        return self._exit_code

    async def wait_exited(self) -> int | None:
        """Return when the engine has gone (stopped or died), with its exit code if it had one."""
        await self._exited.wait()
        return self._exit_code

    def _mark_exited(self, code: int | None) -> None:
        self._exit_code = code
        self._exited.set()

    async def probe(self, client: httpx.AsyncClient, timeout_s: float) -> str | None:
        """One health check: None when the engine answers healthy, else why not."""
        if not self.is_alive():
            return self.death_reason()
        try:
            response = await client.get(self.health_url, timeout=timeout_s)
        except httpx.HTTPError as err:
            return f"health check failed: {type(err).__name__} {err}".strip()
        if response.status_code != 200:
            return f"health check answered {response.status_code}"
        return None

    def death_reason(self) -> str:
        return f"{self.name} engine exited with code {self.exit_code}"

    async def wait_healthy(self, client: httpx.AsyncClient, deadline: float) -> None:
        """Poll the health endpoint until it answers 200; fail at once if the engine dies."""
        last = "no answer yet"
        while True:
            if not self.is_alive():
                raise EngineError(f"{self.death_reason()} before answering its health check")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(
                    f"{self.name} engine did not become healthy within startup_timeout_s="
                    f"{self.settings.startup_timeout_s:g}s ({last})"
                )
            reason = await self.probe(client, min(self.settings.health_timeout_s, remaining))
            if reason is None:
                return
            last = reason
            # Wake early if the engine dies while we wait.
            exited = asyncio.ensure_future(self._exited.wait())
            try:
                await asyncio.wait({exited}, timeout=min(HEALTH_POLL_S, max(remaining, 0.0)))
            finally:
                exited.cancel()

    async def in_flight(self, client: httpx.AsyncClient) -> int | None:
        """Requests running or queued in the engine (from its metrics); None when unknown."""
        try:
            response = await client.get(self.metrics_url, timeout=self.settings.health_timeout_s)
            response.raise_for_status()
        except httpx.HTTPError:
            return None
        return count_in_flight(response.text)
