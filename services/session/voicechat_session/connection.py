"""One WebSocket connection: its own voice pipeline state, turn by turn.

Per connection: VAD stream and turn detector, utterance buffer, transcription, TTS voice and speed, history
and the LLM stream of the current turn. Shared (read-only) via :class:`~voicechat_session.serving.Pod`: the
model weights, the worker pool and the HTTP connection pool to the LLM.

Tasks of a connection: the receive loop (audio and control messages), one sender draining the outbound
queue (the only writer to the socket, so ordering holds), a watchdog (idle and age limits) and at most one
turn at a time (LLM producer → TTS synthesiser → real-time pacer). Closing cancels all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voicechat_session import metrics
from voicechat_session.audio import RealTimeBudget, StreamingResampler, pcm16_chunks
from voicechat_session.backends.audio import pcm16_to_float
from voicechat_session.backends.base import STT_SAMPLE_RATE, Audio, VadStream
from voicechat_session.backends.loader import ModelSet, load_models
from voicechat_session.clauses import ClauseSplitter, speakable
from voicechat_session.history import ConversationHistory
from voicechat_session.llm import LLMError, StreamStats
from voicechat_session.pool import Priority
from voicechat_session.protocol import (
    OUTPUT_SAMPLE_RATE,
    AssistantMessage,
    AudioEndMessage,
    AudioStartMessage,
    ClientMessage,
    CloseCode,
    ConfigureMessage,
    ErrorCode,
    ErrorMessage,
    GetHistoryMessage,
    HistoryClearedMessage,
    HistoryEntry,
    HistoryMessage,
    InterruptedMessage,
    InterruptMessage,
    InterruptReason,
    ReadyMessage,
    ResetMessage,
    StartedMessage,
    StartMessage,
    TextMessage,
    TranscriptMessage,
    TurnMetricsMessage,
    VadMessage,
    client_message_adapter,
)
from voicechat_session.serving import Pod
from voicechat_session.settings import SessionSettings
from voicechat_session.turns import Phase, SpeechEnded, SpeechStarted, TurnConfig, TurnDetector

log = logging.getLogger(__name__)

PARTIAL_INTERVAL_MS = 1000.0
"""Speech between two partial transcripts."""
TTS_LOOKAHEAD_CLAUSES = 2
"""Clauses synthesised ahead of playback: enough to hide TTS time, little to throw away on barge-in."""
ERROR_REPEAT_S = 1.0
"""The same rate-limit error is sent at most this often (a flood must not become a flood of errors)."""
MAX_REFUSED_AUDIO_S = 30.0
"""Audio refused for being too fast beyond this → the client is misbehaving: close."""


class TtsFailed(Exception):
    pass


@dataclass(eq=False)
class Turn:
    """One user turn and the assistant's reply to it."""

    id: int
    source: Literal["voice", "text"]
    user_end: float
    """perf_counter when the user's turn ended: last speech heard (voice) or the text received."""
    decided: float | None = None
    """perf_counter when the end of speech was decided (voice)."""
    task: asyncio.Task[None] | None = None
    audio: Audio | None = None
    """The utterance (voice turns), kept until transcribed so a superseding utterance can include it."""
    finalized: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stt_done: bool = False
    llm_started: bool = False
    skipped: bool = False
    interrupted: InterruptReason | None = None
    ended: bool = False
    discard_history: bool = False
    audio_started: bool = False
    clauses: list[str] = field(default_factory=list)
    clause_samples: list[int] = field(default_factory=list)
    sent_samples: list[int] = field(default_factory=list)
    stt_s: float | None = None
    ttft_s: float | None = None
    tts_first_s: float | None = None
    first_audio_at: float | None = None

    @property
    def active(self) -> bool:
        return not self.ended

    def spoken_text(self) -> str:
        """The reply as far as its audio was sent: whole clauses, then the share of a clause cut short."""
        words: list[str] = []
        for text, total, sent in zip(self.clauses, self.clause_samples, self.sent_samples, strict=True):
            if sent >= total:
                words.append(text)
                continue
            if sent > 0:
                clause_words = text.split()
                keep = int(len(clause_words) * sent / max(total, 1))
                if keep:
                    words.append(" ".join(clause_words[:keep]))
            break
        return " ".join(words)

    @property
    def audio_ms(self) -> float:
        return 1000.0 * sum(self.sent_samples) / OUTPUT_SAMPLE_RATE


@dataclass(frozen=True)
class _AudioOut:
    turn: Turn
    clause: int
    data: bytes


@dataclass(frozen=True)
class _TurnEnd:
    turn: Turn


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


_Outgoing = (
    ReadyMessage
    | StartedMessage
    | VadMessage
    | TranscriptMessage
    | AssistantMessage
    | HistoryClearedMessage
    | HistoryMessage
    | ErrorMessage
    | _AudioOut
    | _TurnEnd
    | _Close
)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _error_code_for(exc: ValidationError) -> tuple[ErrorCode, str]:
    """Map a pydantic failure on a client message to the protocol's error code and a readable message."""
    first = exc.errors()[0]
    kind = first["type"]
    if kind == "json_invalid":
        return "bad_json", f"not valid JSON: {first['msg']}"
    if kind == "union_tag_invalid":
        ctx = first.get("ctx") or {}
        return (
            "unknown_type",
            f"unknown message type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}",
        )
    if kind in ("union_tag_not_found", "model_attributes_type", "model_type"):
        return "invalid_message", "a control message is a JSON object with a string 'type' field"
    where = ".".join(str(p) for p in first["loc"][1:]) or "message"
    return "invalid_message", f"{where}: {first['msg']}"


class Connection:
    def __init__(self, pod: Pod, websocket: WebSocket) -> None:
        self.pod = pod
        self.settings: SessionSettings = pod.settings
        self.ws = websocket
        self.session_id = uuid.uuid4().hex[:16]
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.models: ModelSet | None = None
        s = self.settings
        self.voice = s.tts_voice
        self.speed = s.tts_speed
        self.sample_rate: int | None = None  # set by `start`
        self.history = ConversationHistory(
            system_prompt=pod.system_prompt,
            max_messages=s.history_max_messages,
            max_chars=s.history_max_chars,
        )
        self.turn: Turn | None = None
        self._turn_seq = 0
        self._utterance_seq = 0
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._vad: VadStream | None = None
        self._detector: TurnDetector | None = None
        self._resampler: StreamingResampler | None = None
        self._budget: RealTimeBudget | None = None
        self._last_speech_at: float | None = None
        self._partial_task: asyncio.Task[None] | None = None
        self._partial_at_ms = 0.0
        self._last_error_at: dict[str, float] = {}
        self._refused_audio_s = 0.0
        self._closing = False
        self.draining = False
        self.closed = asyncio.Event()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def run(self, accepted: float) -> None:
        """Serve the connection until either side closes it. The socket was accepted at ``accepted``
        (``time.perf_counter()``), the start of the measured connect latency."""
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await self._open(accepted):
                return
            sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id}")
            receiver = asyncio.create_task(self._receive_loop(), name=f"recv-{self.session_id}")
            watchdog = asyncio.create_task(self._watchdog(), name=f"watch-{self.session_id}")
            tasks = [sender, receiver, watchdog]
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._cleanup(tasks)

    async def _open(self, accepted: float) -> bool:
        s = self.settings
        if s.sharing == "connection":
            # The design's "before": this connection loads its own weights, the user waits.
            try:
                self.models = await self.pod.run_model(Priority.BACKGROUND, load_models, s)
                metrics.MODEL_LOADS_TOTAL.labels(scope="connection").inc()
            except Exception:
                log.exception("loading models for a connection failed", extra={"session_id": self.session_id})
                await self._send_fatal_now("internal", "could not load models", CloseCode.INTERNAL_ERROR)
                return False
        else:
            self.models = self.pod.models
        assert self.models is not None, "pod models are loaded before /readyz lets traffic in"
        self._vad = self.models.vad.stream()
        self._detector = TurnDetector(
            TurnConfig(
                threshold=s.vad_threshold,
                min_speech_ms=s.vad_min_speech_ms,
                min_silence_ms=s.vad_min_silence_ms,
                max_utterance_s=s.max_utterance_s,
            ),
            window_samples=self._vad.window_samples,
        )
        info = self.pod.llm_info
        connect_s = time.perf_counter() - accepted
        ready = ReadyMessage(
            session_id=self.session_id,
            connect_ms=round(connect_s * 1000.0, 3),
            voices=self.pod.voices,
            voice=self.voice,
            speed=self.speed,
            sharing=s.sharing,
            llm_model=info.model or self.pod.llm.model,
            llm_warm_ttft_ms=info.warm_ttft_ms,
        )
        await self.ws.send_text(ready.model_dump_json())
        metrics.CONNECT_SECONDS.observe(connect_s)
        self.last_activity = time.monotonic()  # the idle clock starts at ready, not during a model load
        log.info(
            "session opened",
            extra={"session_id": self.session_id, "connect_ms": ready.connect_ms, "sharing": s.sharing},
        )
        return True

    async def _cleanup(self, tasks: list[asyncio.Task[None]]) -> None:
        pending = list(tasks)
        if self.turn is not None and self.turn.task is not None:
            pending.append(self.turn.task)
        if self._partial_task is not None:
            pending.append(self._partial_task)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.turn is not None and not self.turn.finalized.done():
            self.turn.finalized.set_result(None)
        if self.ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self.ws.close(CloseCode.NORMAL)
        self.closed.set()
        log.info(
            "session closed",
            extra={"session_id": self.session_id, "age_s": round(time.monotonic() - self.opened_at, 1)},
        )

    async def _send_fatal_now(self, code: ErrorCode, message: str, close_code: int) -> None:
        metrics.ERRORS_TOTAL.labels(code=code).inc()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await self.ws.send_text(ErrorMessage(code=code, message=message, fatal=True).model_dump_json())
            await self.ws.close(close_code, message[:120])

    def close(
        self, code: int, reason: str, error: ErrorCode | None = None, message: str | None = None
    ) -> None:
        """Close after everything queued so far is sent (optionally after a fatal ``error``)."""
        if self._closing:
            return
        self._closing = True
        if error is not None:
            self._error(error, message or reason, fatal=True)
        self._outbox.put_nowait(_Close(code, reason[:120]))

    async def drain(self, grace_s: float) -> None:
        """SIGTERM: no new turns; the turn in progress may finish within ``grace_s``; then close 1001."""
        self.draining = True
        turn = self.turn
        if turn is not None and turn.active:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(turn.finalized)
            if turn.active:
                self._interrupt(turn, "shutdown")
        self.close(
            CloseCode.GOING_AWAY, "server shutting down", "shutting_down", "the server is shutting down"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.closed.wait()

    async def _watchdog(self) -> None:
        s = self.settings
        while not self._closing:
            now = time.monotonic()
            busy = self.turn is not None and self.turn.active
            if now - self.opened_at >= s.max_session_s:
                self.close(
                    CloseCode.SESSION_EXPIRED,
                    "session expired",
                    "session_expired",
                    f"sessions last at most {s.max_session_s:g} s",
                )
                return
            if not busy and now - self.last_activity >= s.idle_timeout_s:
                self.close(
                    CloseCode.IDLE_TIMEOUT,
                    "idle timeout",
                    "idle_timeout",
                    f"nothing received for {s.idle_timeout_s:g} s",
                )
                return
            idle_left = s.idle_timeout_s - (now - self.last_activity)
            age_left = s.max_session_s - (now - self.opened_at)
            await asyncio.sleep(max(0.05, min(1.0, idle_left if not busy else 1.0, age_left)))

    # -------------------------------------------------------------------------------------------- output
    def _send(self, message: _Outgoing) -> None:
        self._outbox.put_nowait(message)

    def _error(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        metrics.ERRORS_TOTAL.labels(code=code).inc()
        log.info("client error", extra={"session_id": self.session_id, "code": code, "error": message})
        self._send(ErrorMessage(code=code, message=message, fatal=fatal))

    def _error_throttled(self, code: ErrorCode, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_at.get(code, -ERROR_REPEAT_S) >= ERROR_REPEAT_S:
            self._last_error_at[code] = now
            self._error(code, message)

    async def _send_loop(self) -> None:
        """The only writer to the socket: messages leave in queue order."""
        try:
            while True:
                item = await self._outbox.get()
                if isinstance(item, _AudioOut):
                    await self._send_audio(item)
                elif isinstance(item, _TurnEnd):
                    await self._finalize_turn(item.turn)
                elif isinstance(item, _Close):
                    await self.ws.close(item.code, item.reason)
                    return
                else:
                    await self.ws.send_text(item.model_dump_json())
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # The peer went away mid-send; the receive loop sees the disconnect too.
            log.info("send failed", extra={"session_id": self.session_id, "error": repr(exc)})
        except Exception:
            log.exception("sender failed", extra={"session_id": self.session_id})
            raise

    async def _send_audio(self, item: _AudioOut) -> None:
        turn = item.turn
        if turn.interrupted is not None:
            return  # queued before the interruption: never sent after `interrupted`
        if not turn.audio_started:
            turn.audio_started = True
            await self.ws.send_text(AudioStartMessage(turn_id=turn.id).model_dump_json())
        await self.ws.send_bytes(item.data)
        turn.sent_samples[item.clause] += len(item.data) // 2
        if turn.first_audio_at is None:
            turn.first_audio_at = time.perf_counter()
            metrics.TIME_TO_FIRST_AUDIO_SECONDS.labels(source=turn.source).observe(
                turn.first_audio_at - turn.user_end
            )

    async def _finalize_turn(self, turn: Turn) -> None:
        try:
            if turn.skipped:
                return
            if turn.interrupted is not None:
                await self._send_now(InterruptedMessage(turn_id=turn.id, reason=turn.interrupted))
            if turn.audio_started:
                await self._send_now(AudioEndMessage(turn_id=turn.id))
            spoken = turn.spoken_text()
            if turn.llm_started or spoken:
                await self._send_now(AssistantMessage(text=spoken, final=True, turn_id=turn.id))
            if not turn.discard_history:
                self.history.add("assistant", spoken)
            now = time.perf_counter()
            ttfa = None if turn.first_audio_at is None else turn.first_audio_at - turn.user_end
            endpointing = None if turn.decided is None else turn.decided - turn.user_end
            await self._send_now(
                TurnMetricsMessage(
                    turn_id=turn.id,
                    source=turn.source,
                    endpointing_ms=_ms(endpointing),
                    stt_ms=_ms(turn.stt_s),
                    llm_ttft_ms=_ms(turn.ttft_s),
                    tts_first_chunk_ms=_ms(turn.tts_first_s),
                    time_to_first_audio_ms=_ms(ttfa),
                    turn_ms=_ms(now - turn.user_end),
                    audio_ms=round(turn.audio_ms, 1),
                    interrupted=turn.interrupted is not None,
                )
            )
            log.info(
                "turn finished",
                extra={
                    "session_id": self.session_id,
                    "turn_id": turn.id,
                    "source": turn.source,
                    "interrupted": turn.interrupted,
                    "ttfa_ms": _ms(ttfa),
                    "stt_ms": _ms(turn.stt_s),
                    "llm_ttft_ms": _ms(turn.ttft_s),
                    "tts_first_ms": _ms(turn.tts_first_s),
                },
            )
        finally:
            if not turn.finalized.done():
                turn.finalized.set_result(None)

    async def _send_now(self, message: BaseModel) -> None:
        await self.ws.send_text(message.model_dump_json())

    # --------------------------------------------------------------------------------------------- input
    async def _receive_loop(self) -> None:
        max_bytes = self.settings.max_frame_bytes
        try:
            while not self._closing:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self.last_activity = time.monotonic()
                data: bytes | None = message.get("bytes")
                text: str | None = message.get("text")
                size = len(data) if data is not None else len((text or "").encode())
                if size > max_bytes:
                    self._error(
                        "frame_too_large", f"frame of {size} bytes exceeds max_frame_bytes={max_bytes}"
                    )
                    continue
                if data is not None:
                    await self._on_audio(data)
                elif text is not None:
                    self._on_text(text)
        except WebSocketDisconnect:
            return
        except Exception:
            log.exception("receive loop failed", extra={"session_id": self.session_id})
            self.close(CloseCode.INTERNAL_ERROR, "internal error", "internal", "internal error")

    def _on_text(self, raw: str) -> None:
        try:
            message: ClientMessage = client_message_adapter.validate_json(raw)
        except ValidationError as exc:
            code, text = _error_code_for(exc)
            self._error(code, text)
            return
        if isinstance(message, StartMessage):
            self._on_start(message)
        elif isinstance(message, TextMessage):
            self._start_turn("text", text=message.text)
        elif isinstance(message, InterruptMessage):
            if self.turn is not None and self.turn.active:
                self._interrupt(self.turn, "client")
        elif isinstance(message, ResetMessage):
            self._on_reset()
        elif isinstance(message, ConfigureMessage):
            self._on_configure(message.voice, message.speed)
        elif isinstance(message, GetHistoryMessage):
            entries = [HistoryEntry(role=m.role, content=m.content) for m in self.history.messages()]
            self._send(HistoryMessage(messages=entries))

    def _check_voice(self, voice: str | None) -> bool:
        if voice is not None and voice not in self.pod.voices:
            self._error("unknown_voice", f"unknown voice {voice!r}; voices: {', '.join(self.pod.voices)}")
            return False
        return True

    def _on_start(self, message: StartMessage) -> None:
        if self.sample_rate is not None:
            self._error("already_started", "the session is already started (send configure to change voice)")
            return
        if not self._check_voice(message.voice):
            return
        self.sample_rate = message.sample_rate
        self.voice = message.voice or self.voice
        self.speed = message.speed or self.speed
        self._resampler = StreamingResampler(message.sample_rate, STT_SAMPLE_RATE)
        self._budget = RealTimeBudget(self.settings.max_audio_rate_factor)
        self._send(StartedMessage(sample_rate=message.sample_rate, voice=self.voice, speed=self.speed))

    def _on_configure(self, voice: str | None, speed: float | None) -> None:
        if not self._check_voice(voice):
            return
        self.voice = voice or self.voice
        self.speed = speed or self.speed
        self._send(
            StartedMessage(
                sample_rate=self.sample_rate or STT_SAMPLE_RATE, voice=self.voice, speed=self.speed
            )
        )

    def _on_reset(self) -> None:
        turn = self.turn
        if turn is not None and not turn.finalized.done():
            # Also a turn that ended but whose reply the sender has not yet written to the history.
            turn.discard_history = True
            self._interrupt(turn, "reset")
        self.history.clear()
        self._send(HistoryClearedMessage())

    async def _on_audio(self, data: bytes) -> None:
        if self.sample_rate is None or self._resampler is None or self._budget is None:
            self._error_throttled("not_started", "send a start message before audio")
            return
        if len(data) % 2:
            self._error("odd_length_audio", f"PCM16 frames need an even number of bytes, got {len(data)}")
            return
        audio = pcm16_to_float(data)
        seconds = audio.size / self.sample_rate
        if not self._budget.take(seconds):
            self._refused_audio_s += seconds
            if self._refused_audio_s > MAX_REFUSED_AUDIO_S:
                self.close(
                    CloseCode.POLICY_VIOLATION,
                    "audio far faster than real time",
                    "audio_too_fast",
                    "audio keeps arriving far faster than real time; closing",
                )
            else:
                factor = self.settings.max_audio_rate_factor
                self._error_throttled("audio_too_fast", f"audio faster than {factor:g}x real time is dropped")
            return
        await self._process_audio(self._resampler.process(audio))

    async def _process_audio(self, audio16: Audio) -> None:
        assert self._vad is not None
        assert self._detector is not None
        probs = await self.pod.run_vad(self._vad.process, audio16)
        detector = self._detector
        events = detector.feed(audio16, probs)
        now = time.perf_counter()
        if detector.last_feed_had_speech:
            self._last_speech_at = now
        for event in events:
            if isinstance(event, SpeechStarted):
                self._partial_at_ms = 0.0
                self._send(VadMessage(speaking=True))
            elif isinstance(event, SpeechEnded):
                self._send(VadMessage(speaking=False))
                self._on_utterance(event, decided=now)
        if detector.phase is Phase.SPEECH:
            turn = self.turn
            if (
                turn is not None
                and turn.active
                and turn.stt_done
                and turn.interrupted is None
                and detector.speech_ms >= self.settings.barge_in_min_speech_ms
            ):
                self._interrupt(turn, "barge_in")
            self._maybe_partial()

    def _on_utterance(self, event: SpeechEnded, decided: float) -> None:
        self._utterance_seq += 1
        if self._partial_task is not None:
            self._partial_task.cancel()
        turn = self.turn
        if (
            turn is not None
            and turn.active
            and turn.stt_done
            and turn.interrupted is None
            and event.speech_ms < self.settings.barge_in_min_speech_ms
        ):
            # Too short to interrupt the assistant: a cough or its own echo, not a turn.
            log.debug(
                "short utterance ignored while the assistant speaks", extra={"session_id": self.session_id}
            )
            return
        user_end = self._last_speech_at if self._last_speech_at is not None else decided
        self._start_turn("voice", audio=event.audio, user_end=user_end, decided=decided)

    def _maybe_partial(self) -> None:
        detector = self._detector
        if (
            not self.settings.partial_transcripts
            or detector is None
            or self._partial_task is not None
            or detector.speech_ms - self._partial_at_ms < PARTIAL_INTERVAL_MS
            or not self.pod.pool_idle
        ):
            return
        self._partial_at_ms = detector.speech_ms
        self._partial_task = asyncio.create_task(
            self._partial(detector.utterance_so_far(), self._utterance_seq)
        )

    async def _partial(self, audio: Audio, utterance: int) -> None:
        assert self.models is not None
        try:
            text = await self.pod.run_model(Priority.BACKGROUND, self.models.stt.transcribe, audio)
        except Exception:
            log.warning("partial transcription failed", extra={"session_id": self.session_id}, exc_info=True)
            return
        finally:
            self._partial_task = None
        if text and utterance == self._utterance_seq:
            self._send(TranscriptMessage(text=text, final=False, turn_id=self._turn_seq + 1))

    # --------------------------------------------------------------------------------------------- turns
    def _interrupt(self, turn: Turn, reason: InterruptReason) -> None:
        """Stop a turn now: nothing more of its audio leaves; its LLM stream closes; history keeps what was sent."""
        if turn.interrupted is not None or turn.ended:
            return
        turn.interrupted = reason
        metrics.INTERRUPTIONS_TOTAL.labels(reason=reason).inc()
        self._end_turn(turn)
        if turn.task is not None:
            turn.task.cancel()
        log.info(
            "turn interrupted", extra={"session_id": self.session_id, "turn_id": turn.id, "reason": reason}
        )

    def _end_turn(self, turn: Turn) -> None:
        if not turn.ended:
            turn.ended = True
            self._send(_TurnEnd(turn))

    def _start_turn(
        self,
        source: Literal["voice", "text"],
        *,
        audio: Audio | None = None,
        text: str | None = None,
        user_end: float | None = None,
        decided: float | None = None,
    ) -> None:
        if self.draining or self._closing:
            self._error("shutting_down", "the server is shutting down; no new turns")
            return
        previous = self.turn
        if previous is not None and previous.active:
            if audio is not None and previous.audio is not None and not previous.stt_done:
                # The user went on talking before the last utterance was even transcribed: one utterance.
                audio = np.concatenate([previous.audio, audio])
            self._interrupt(previous, "superseded")
        self._turn_seq += 1
        turn = Turn(
            id=self._turn_seq,
            source=source,
            user_end=user_end or time.perf_counter(),
            decided=decided,
            audio=audio,
        )
        self.turn = turn
        turn.task = asyncio.create_task(self._run_turn(turn, previous, audio, text), name=f"turn-{turn.id}")

    async def _run_turn(
        self, turn: Turn, previous: Turn | None, audio: Audio | None, text: str | None
    ) -> None:
        assert self.models is not None
        try:
            if previous is not None:
                await asyncio.shield(previous.finalized)  # its reply enters the history first
            if audio is not None:
                started = time.perf_counter()
                try:
                    text = await self.pod.run_model(Priority.FIRST_AUDIO, self.models.stt.transcribe, audio)
                except Exception:
                    log.exception("transcription failed", extra={"session_id": self.session_id})
                    self._error("stt_failed", "transcription failed")
                    turn.skipped = True
                    return
                turn.audio = None
                turn.stt_s = time.perf_counter() - started
                metrics.STT_SECONDS.observe(turn.stt_s)
                self._send(TranscriptMessage(text=text, final=True, turn_id=turn.id))
            turn.stt_done = True
            if not text or not text.strip():
                turn.skipped = True  # noise, not words: no reply
                return
            self.history.add("user", text)
            metrics.TURNS_TOTAL.labels(source=turn.source).inc()
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            audio_out: asyncio.Queue[tuple[int, Audio] | None] = asyncio.Queue(maxsize=TTS_LOOKAHEAD_CLAUSES)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce_text(turn, clauses))
                group.create_task(self._synthesize(turn, clauses, audio_out))
                group.create_task(self._pace(turn, audio_out))
        except* TtsFailed:
            self._error("tts_failed", "speech synthesis failed")
        except* Exception:
            log.exception("turn failed", extra={"session_id": self.session_id, "turn_id": turn.id})
            self._error("internal", "the turn failed unexpectedly")
        finally:
            self._end_turn(turn)

    async def _produce_text(self, turn: Turn, clauses: asyncio.Queue[str | None]) -> None:
        splitter = ClauseSplitter()
        stats = StreamStats()

        def on_delta(delta: str) -> None:
            if not turn.llm_started:
                turn.llm_started = True
                turn.ttft_s = stats.ttft_s
                if turn.ttft_s is not None:
                    metrics.LLM_TTFT_SECONDS.observe(turn.ttft_s)
            self._send(AssistantMessage(text=delta, final=False, turn_id=turn.id))
            for clause in splitter.push(delta):
                clauses.put_nowait(clause)

        try:
            await self.pod.llm.stream(self.history.messages(), stats, on_delta)
        except LLMError as exc:
            # Tell the client now, and still speak what did arrive (a reply cut by a deadline is better
            # than silence); the turn then ends normally.
            self._error(exc.code, str(exc))
        if rest := splitter.flush():
            clauses.put_nowait(rest)
        clauses.put_nowait(None)

    async def _synthesize(
        self,
        turn: Turn,
        clauses: asyncio.Queue[str | None],
        audio_out: asyncio.Queue[tuple[int, Audio] | None],
    ) -> None:
        assert self.models is not None
        tts = self.models.tts
        while (clause := await clauses.get()) is not None:
            text = speakable(clause)
            if not any(ch.isalnum() for ch in text):
                continue
            started = time.perf_counter()
            try:
                # Voice and speed are read per clause: `configure` applies from the next clause.
                priority = Priority.FIRST_AUDIO if not turn.clauses else Priority.REPLY
                samples = await self.pod.run_model(priority, tts.synthesize, text, self.voice, self.speed)
            except Exception as exc:
                log.exception("speech synthesis failed", extra={"session_id": self.session_id})
                raise TtsFailed(str(exc)) from exc
            if turn.tts_first_s is None:
                turn.tts_first_s = time.perf_counter() - started
                metrics.TTS_FIRST_CHUNK_SECONDS.observe(turn.tts_first_s)
            if samples.size == 0:
                continue
            turn.clauses.append(text)
            turn.clause_samples.append(int(samples.size))
            turn.sent_samples.append(0)
            await audio_out.put((len(turn.clauses) - 1, samples))
        await audio_out.put(None)

    async def _pace(self, turn: Turn, audio_out: asyncio.Queue[tuple[int, Audio] | None]) -> None:
        """Queue audio at most ``output_lead_ms`` ahead of real-time playback.

        The client buffers only that much, so an interruption discards little unheard audio, and the text
        "actually sent" is close to the text actually heard.
        """
        loop = asyncio.get_running_loop()
        lead_s = self.settings.output_lead_ms / 1000.0
        chunk_ms = self.settings.output_chunk_ms
        playback_start: float | None = None
        queued_s = 0.0
        while (item := await audio_out.get()) is not None:
            index, samples = item
            for chunk in pcm16_chunks(samples, OUTPUT_SAMPLE_RATE, chunk_ms):
                now = loop.time()
                if playback_start is None or now - playback_start > queued_s:
                    # First chunk, or the client ran dry waiting for TTS: playback (re)starts now.
                    playback_start = now - queued_s
                ahead = queued_s - (now - playback_start)
                if ahead > lead_s:
                    await asyncio.sleep(ahead - lead_s)
                self._send(_AudioOut(turn, index, chunk))
                queued_s += len(chunk) / 2 / OUTPUT_SAMPLE_RATE
