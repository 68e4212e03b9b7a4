"""The pod: shared read-only models, the bounded model pool and the chat model (LLM client or Bedrock).

Everything here is shared by the connections of one process, and none of it holds conversation state (that
lives in :class:`voicechat_session.connection.Connection`, one per WebSocket) or knows the open sessions
(:mod:`voicechat_session.registry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx

from voicechat_llm.report import WarmupReport
from voicechat_session import metrics
from voicechat_session.audio import Audio
from voicechat_session.backends.base import AsyncSpeechToText, SpeechServerError, StreamingTextToSpeech
from voicechat_session.backends.loader import (
    ModelSet,
    SttModel,
    TtsModel,
    close_models,
    load_models,
    load_tts,
    warm_up_async,
    worker_count,
)
from voicechat_session.llm import LLM_KEEPALIVE_EXPIRY_S, ChatModel, LLMClient, LLMError
from voicechat_session.pool import Priority, PriorityPool
from voicechat_session.resume import ResumeCodec, codec_from_settings
from voicechat_session.settings import SessionSettings

if TYPE_CHECKING:
    from voicechat_session.bedrock import BedrockChatModel

log = logging.getLogger(__name__)

START_RETRY_S = (0.5, 15.0)
"""A speech server not answering at start: first retry after 0.5 s, doubling up to every 15 s."""
BEDROCK_RECHECK_S = (2.0, 60.0)
"""A failed Bedrock check is retried with doubling delays in this range: credentials or a model grant that
arrive later (an IAM change) make the pod ready without a restart."""

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class LlmInfo:
    """What the session service knows about the shared LLM (from its gate's ``/warmup``)."""

    model: str | None = None
    warm_ttft_ms: float | None = None
    report: dict[str, Any] | None = None


def parse_warmup_report(raw: Any) -> LlmInfo:
    """The LLM service's warm-up report, tolerating other shapes (another OpenAI-compatible server)."""
    if not isinstance(raw, dict):
        return LlmInfo()
    try:
        report = WarmupReport.model_validate(raw)
    except ValueError:
        return LlmInfo(report=raw)
    ttft_ms = report.warm_ttft_seconds * 1000 if report.warm_ttft_seconds is not None else None
    return LlmInfo(
        model=report.served_model_name, warm_ttft_ms=ttft_ms, report=report.model_dump(mode="json")
    )


TTS_SPEED_MARGIN = 0.85
"""Share of the playing chunk's duration the next chunk's synthesis may take (timing noise, other work)."""
TTS_SPEED_SMOOTHING = 0.3
"""Weight of the newest clause in the running real-time factor: recent load counts most."""


class Pod:
    """Process-wide state of the session service."""

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.system_prompt = (
            settings.system_prompt_file.read_text(encoding="utf-8").strip()
            if settings.system_prompt_file is not None
            else settings.system_prompt
        )
        self.workers = worker_count(settings)
        # STT and TTS: seconds-long calls, as many at once as there are cores, most urgent first.
        self.pool = PriorityPool(self.workers)
        # VAD: sub-millisecond calls on every audio frame; their own thread so they never queue behind a
        # transcription (a slow turn elsewhere must not delay this session's barge-in or endpointing).
        self.vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self.models: ModelSet | None = None
        self.tts_real_time_factor: float | None = None
        """Seconds of synthesis (pool wait included) per second of speech, over recent clauses."""
        self.warmup_seconds: dict[str, float] = {}
        self.voices: list[str] = []
        self.llm_info = LlmInfo(model=settings.llm_model)
        # Seals and opens resume tokens with the key every session pod of the VoiceChat shares.
        self.resume: ResumeCodec = codec_from_settings(settings)
        # llama.cpp's HTTP server closes idle keep-alive connections after 5 s without telling the client;
        # expire ours first so a reused connection is never one the server already dropped.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=None, keepalive_expiry=LLM_KEEPALIVE_EXPIRY_S),
        )
        self.bedrock: BedrockChatModel | None = None
        self.llm: ChatModel
        if settings.llm_provider == "bedrock":
            # Imported only here: boto3 is slow to import and unused by the OpenAI-compatible provider.
            from voicechat_session.bedrock import BedrockChatModel

            self.llm = self.bedrock = BedrockChatModel(settings)
        else:
            self.llm = LLMClient(settings, self.http)
        self._llm_watch: asyncio.Task[None] | None = None
        self.not_ready_reason: str | None = "loading models"
        self._start_retry: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load and warm the shared models (``sharing=pod``), read the LLM's warm-up report.

        A remote speech server that does not answer does not fail the start (a crash loop would only hide
        the reason): the pod stays not ready, ``/readyz`` says why, and the warm-up is retried in the
        background until it succeeds.
        """
        started = time.perf_counter()
        if self.settings.sharing == "pod":
            self.models = await self.run_model(Priority.BACKGROUND, load_models, self.settings)
            metrics.MODEL_LOADS_TOTAL.labels(scope="pod").inc()
        if await self._warm():
            await self._finish_start(started)
        else:
            self._start_retry = asyncio.create_task(self._retry_start(started), name="speech server retry")

    async def _warm(self) -> bool:
        """Warm the pod's models (or list the voices, ``sharing=connection``); False: a speech server failed."""
        try:
            if self.models is not None:
                self.not_ready_reason = "warming up models"
                self.warmup_seconds = await warm_up_async(self.models, self.settings, self._run_background)
                self.voices = list(self.models.tts.voices)
            else:
                # Voices are needed for validation before any connection loads its own models; TTS alone.
                self.voices = await self._voices_of_a_new_tts()
        except SpeechServerError as exc:
            self.not_ready_reason = f"speech server not ready: {exc}"
            log.warning("speech server not ready; retrying", extra={"error": str(exc)})
            return False
        return True

    async def _retry_start(self, started: float) -> None:
        delay, longest = START_RETRY_S
        try:
            while True:
                await asyncio.sleep(delay)
                if await self._warm():
                    await self._finish_start(started)
                    return
                delay = min(delay * 2, longest)
        except Exception as exc:
            # Not a speech server being down (that is retried): a bug or bad configuration. Stay not ready
            # and say so, rather than dying unobserved with a stale reason.
            log.exception("the session service could not start")
            self.not_ready_reason = f"start failed: {type(exc).__name__}; see the log"

    async def _voices_of_a_new_tts(self) -> list[str]:
        tts = await self.run_model(Priority.BACKGROUND, load_tts, self.settings)
        if not isinstance(tts, StreamingTextToSpeech):
            return list(tts.voices)
        try:
            voices = await tts.refresh_voices()
        finally:
            await tts.close()
        if self.settings.tts_voice not in voices:
            raise SpeechServerError(
                f"the text-to-speech server has no voice tts_voice={self.settings.tts_voice!r}"
            )
        return voices

    async def _finish_start(self, started: float) -> None:
        if self.bedrock is not None:
            self.not_ready_reason = "checking Bedrock"
            if not await self.check_bedrock(self.bedrock):
                self._llm_watch = asyncio.create_task(
                    self._recheck_bedrock(self.bedrock), name="bedrock recheck"
                )
                return
        else:
            await self.refresh_llm_info()
        self.not_ready_reason = None
        log.info(
            "session service ready",
            extra={
                "sharing": self.settings.sharing,
                "workers": self.workers,
                "startup_s": round(time.perf_counter() - started, 3),
                "llm_model": self.llm_info.model,
            },
        )

    async def refresh_llm_info(self) -> None:
        url = self.settings.llm_warmup_url
        if url:
            try:
                response = await self.http.get(url, timeout=3.0)
                response.raise_for_status()
                self.llm_info = parse_warmup_report(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("LLM warm-up report unavailable", extra={"url": url, "error": str(exc)})
        if self.llm_info.model is None:
            self.llm_info = LlmInfo(
                model=await self.llm.resolve_model(),
                warm_ttft_ms=self.llm_info.warm_ttft_ms,
                report=self.llm_info.report,
            )

    async def check_bedrock(self, bedrock: BedrockChatModel) -> bool:
        """One one-token reply from Bedrock: its TTFT is the warm TTFT shown in /api/info. On failure the
        reason (wrong region, no credentials, no model access) becomes /readyz's, and the pod stays up."""
        try:
            ttft_s = await bedrock.check(self.system_prompt)
        except LLMError as exc:
            self.not_ready_reason = f"Bedrock check failed ({exc.code}): {exc}"
            log.warning("Bedrock check failed", extra={"error": str(exc), "code": exc.code})
            return False
        self.llm_info = LlmInfo(model=bedrock.model, warm_ttft_ms=round(ttft_s * 1000, 1))
        log.info("Bedrock check passed", extra={"model": bedrock.model, "ttft_s": round(ttft_s, 3)})
        return True

    async def _recheck_bedrock(self, bedrock: BedrockChatModel) -> None:
        delay = BEDROCK_RECHECK_S[0]
        while True:
            await asyncio.sleep(delay)
            if await self.check_bedrock(bedrock):
                self.not_ready_reason = None
                log.info("session service ready", extra={"llm_model": self.llm_info.model})
                return
            delay = min(delay * 2, BEDROCK_RECHECK_S[1])

    async def close(self) -> None:
        if self._llm_watch is not None:
            self._llm_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._llm_watch
        if self._start_retry is not None:
            self._start_retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._start_retry
        if self.models is not None:
            await close_models(self.models)
        await self.llm.aclose()
        await self.http.aclose()
        self.pool.shutdown()
        self.vad_executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------ blocking work
    @property
    def pool_idle(self) -> bool:
        """No model call is running or queued (partial transcripts only use idle capacity)."""
        return self.pool.idle

    @property
    def saturated(self) -> bool:
        """More model calls wait than ``speculate_max_waiting``: no work that may be thrown away starts."""
        return self.pool.waiting > self.settings.speculate_max_waiting

    async def run_model(self, priority: Priority, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking model call in the bounded pool (see :mod:`voicechat_session.pool`)."""
        return await self.pool.run(priority, fn, *args, **kwargs)

    async def _run_background(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.pool.run(Priority.BACKGROUND, fn, *args, **kwargs)

    # ------------------------------------------------------------------------------------ speech stages
    async def transcribe(self, stt: SttModel, audio: Audio, priority: Priority) -> str:
        """One utterance → text: in the bounded pool for an in-process model, on the event loop for a remote
        one (it waits on the network; holding a pool slot would only starve local calls)."""
        if isinstance(stt, AsyncSpeechToText):
            return await stt.transcribe_async(audio)
        return await self.run_model(priority, stt.transcribe, audio)

    async def speak(
        self, tts: TtsModel, text: str, voice: str, speed: float, priority: Priority
    ) -> AsyncGenerator[Audio, None]:
        """One clause → 24 kHz audio pieces: a remote TTS's as they arrive, an in-process one's whole clause
        from the pool. Close this iterator (``contextlib.aclosing``) to stop early: a remote response is
        closed with it."""
        if isinstance(tts, StreamingTextToSpeech):
            async with contextlib.aclosing(tts.stream_speech(text, voice, speed)) as pieces:
                async for piece in pieces:
                    yield piece
            return
        yield await self.run_model(priority, tts.synthesize, text, voice, speed)

    def record_synthesis(self, seconds: float, audio_seconds: float) -> None:
        """A clause of ``audio_seconds`` took ``seconds`` to synthesize, waiting for the pool included."""
        if audio_seconds <= 0:
            return
        rtf = seconds / audio_seconds
        previous = self.tts_real_time_factor
        self.tts_real_time_factor = (
            rtf if previous is None else previous + TTS_SPEED_SMOOTHING * (rtf - previous)
        )
        metrics.TTS_REAL_TIME_FACTOR.set(self.tts_real_time_factor)

    def chunk_growth_limit(self) -> float | None:
        """How many times longer than the chunk playing the next may be, to be synthesized before it ends
        (``None`` until a clause was measured)."""
        rtf = self.tts_real_time_factor
        return None if rtf is None else TTS_SPEED_MARGIN / max(rtf, 1e-3)

    async def run_vad(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self.vad_executor, functools.partial(fn, *args, **kwargs)
        )
