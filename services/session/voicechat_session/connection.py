"""One WebSocket connection: socket loops, message dispatch, turn switching, watchdog and close.

The work lives elsewhere: :mod:`.listen` turns audio into speech events, :mod:`.reply` runs a turn
(transcription, LLM → clauses → TTS → pacing) and writes to this connection as its outbox, :mod:`.turn`
holds a turn's state and report. Shared (read-only) via :class:`~voicechat_session.serving.Pod`: the model
weights, the worker pool and the HTTP connection pool to the LLM.

Tasks of a connection: the receive loop (audio and control messages), one sender draining the outbound
queue (the only writer to the socket, so ordering holds), a watchdog (idle and age limits) and at most one
turn at a time. Closing cancels all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Literal

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voicechat_session import metrics
from voicechat_session.audio import STT_SAMPLE_RATE, Audio
from voicechat_session.auth import ANONYMOUS, Identity
from voicechat_session.backends.loader import ModelSet, close_models, load_models
from voicechat_session.history import ConversationHistory
from voicechat_session.limits import SessionRates
from voicechat_session.listen import (
    AudioInput,
    InputEvent,
    Partial,
    Paused,
    Refused,
    Resumed,
    SpeechBegan,
    StillSpeaking,
    Utterance,
)
from voicechat_session.outbox import AudioOut as _AudioOut
from voicechat_session.outbox import BoundedQueue, Outgoing
from voicechat_session.outbox import Close as _Close
from voicechat_session.outbox import History as _History
from voicechat_session.outbox import ResumeToken as _ResumeToken
from voicechat_session.outbox import Text as _Text
from voicechat_session.outbox import TurnEnd as _TurnEnd
from voicechat_session.pool import Priority
from voicechat_session.protocol import (
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
    ResumeTokenMessage,
    StartedMessage,
    StartMessage,
    TextMessage,
    TranscriptMessage,
    VadMessage,
    client_message_adapter,
    describe_validation_error,
)
from voicechat_session.reply import TurnRunner, Voice
from voicechat_session.resumption import restore, seal
from voicechat_session.security import abort_transport
from voicechat_session.serving import Pod
from voicechat_session.speculation import Speculator
from voicechat_session.speculation import count as count_speculation
from voicechat_session.turn import Turn, TurnSource, TurnState

log = logging.getLogger(__name__)

ERROR_REPEAT_S = 1.0
"""The same rate-limit error is sent at most this often (a flood must not become a flood of errors)."""


class Connection:
    """A session: the :class:`~voicechat_session.reply.Outbox` of its turns and the registry's ``Session``."""

    def __init__(self, pod: Pod, websocket: WebSocket, identity: Identity = ANONYMOUS) -> None:
        self.pod = pod
        self.settings = pod.settings
        self.ws = websocket
        self.identity = identity
        self.rates = SessionRates(self.settings, identity)
        self.session_id = uuid.uuid4().hex[:16]
        self.conversation_id = self.session_id
        """The conversation's id: this session's, or the one it resumed (kept across pods)."""
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.models: ModelSet | None = None
        self.voice = Voice(self.settings.tts_voice, self.settings.tts_speed)
        self.history = ConversationHistory(
            system_prompt=pod.system_prompt,
            max_messages=self.settings.history_max_messages,
            max_chars=self.settings.history_max_chars,
        )
        self.input: AudioInput | None = None  # set by `start`
        self.turn: Turn | None = None
        self._runner: TurnRunner | None = None
        self._turn_seq = 0
        self._speculator = Speculator(self.session_id)
        self._outbox = BoundedQueue(self.settings.max_output_bytes)
        self._history_queued = False
        self._tasks: list[asyncio.Task[None]] = []
        self.aborted: str | None = None
        self._last_error_at: dict[str, float] = {}
        self._closing = False
        self.draining = False
        self._drain_utterance: asyncio.Event | None = None
        """While draining: set when the utterance the person was in the middle of has ended."""
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
            tasks = self._tasks = [sender, receiver, watchdog]
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
        self._runner = TurnRunner(self.pod, self.models, self.history, self.voice, self.session_id)
        info = self.pod.llm_info
        connect_s = time.perf_counter() - accepted
        ready = ReadyMessage(
            session_id=self.session_id,
            connect_ms=round(connect_s * 1000.0, 3),
            voices=self.pod.voices,
            voice=self.voice.name,
            speed=self.voice.speed,
            sharing=s.sharing,
            llm_model=info.model or self.pod.llm.model,
            llm_warm_ttft_ms=info.warm_ttft_ms,
            resume_token=self._seal().token,
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
        self._drop_speculation("aborted")
        if self.turn is not None and self.turn.task is not None:
            pending.append(self.turn.task)
        if self.input is not None and self.input.pending_task is not None:
            pending.append(self.input.pending_task)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.turn is not None and not self.turn.finalized.done():
            self.turn.finalized.set_result(None)
        if self.settings.sharing == "connection" and self.models is not None:
            # This connection's own models: a remote backend's HTTP client is closed with them.
            await close_models(self.models)
        if self.ws.application_state is WebSocketState.CONNECTED and self.aborted is None:
            try:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await self.ws.close(CloseCode.NORMAL)
            except TimeoutError:
                self._abort("send_timeout")
            except (RuntimeError, WebSocketDisconnect, OSError):
                pass
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
        self._outbox.put_unbounded(_Close(code, reason[:120]))
        # The close waits behind queued output; a client that does not read must not hold it off forever.
        asyncio.get_running_loop().call_later(self.settings.send_timeout_s * 2, self._close_deadline)

    def _close_deadline(self) -> None:
        if not self.closed.is_set() and self.aborted is None:
            self._abort("close_timeout")

    def _abort(self, reason: str) -> None:
        """Drop the connection now, without the client's cooperation: it stopped reading (the output bound
        or a send deadline hit). The tasks end, the session unregisters; nothing more is queued."""
        if self.aborted is not None:
            return
        self.aborted = reason
        self._closing = True
        metrics.SESSIONS_ABORTED_TOTAL.labels(reason=reason).inc()
        log.warning(
            "session aborted",
            extra={
                "session_id": self.session_id,
                "reason": reason,
                "queued_bytes": self._outbox.queued_bytes,
            },
        )
        abort_transport(self.ws.scope)
        for task in self._tasks:
            task.cancel()
        # What was queued is dropped at once (the memory is the point).
        self._outbox.clear()

    async def drain(self, grace_s: float) -> None:
        """SIGTERM: no new turns; the turn in progress may finish within ``grace_s``; the client gets its
        latest resume token (to continue on another pod); then close 1001."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                if self.input is not None and self.input.speaking:
                    # Mid-sentence: that utterance is the turn in flight. Let it end and be answered, so
                    # the conversation resumes elsewhere without losing what the person just said.
                    self._drain_utterance = asyncio.Event()
                    await self._drain_utterance.wait()
                turn = self.turn
                if turn is not None and turn.active:
                    await asyncio.shield(turn.finalized)
        if self.turn is not None and self.turn.active:
            self._interrupt(self.turn, "shutdown")
        if not self._closing:
            self.send(_ResumeToken())
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

    # ---------------------------------------------------------------------------------- output (Outbox)
    def send(self, message: Outgoing) -> None:
        self._enqueue(_Text(message.model_dump_json()) if isinstance(message, BaseModel) else message)

    def send_audio(self, turn: Turn, clause: int, data: bytes) -> None:
        self._enqueue(_AudioOut(turn, clause, data))

    def end_turn(self, turn: Turn) -> None:
        self._enqueue(_TurnEnd(turn))

    def _enqueue(self, item: Outgoing) -> None:
        if self.aborted is not None:
            return
        if not self._outbox.put(item):
            self._abort("output_overflow")

    def error(self, code: ErrorCode, message: str) -> None:
        self._error(code, message)

    def _error(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        if not fatal:
            # A flood of bad input must not become a flood of error events and log lines.
            show, close = self.rates.error()
            if close:
                self.close(
                    CloseCode.POLICY_VIOLATION,
                    "too many errors",
                    "rate_limited",
                    f"more than {self.settings.max_errors_per_min} errors a minute",
                )
                return
            if not show:
                return
        metrics.ERRORS_TOTAL.labels(code=code).inc()
        log.info("client error", extra={"session_id": self.session_id, "code": code, "error": message})
        self.send(ErrorMessage(code=code, message=message, fatal=fatal))

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
                async with asyncio.timeout(self.settings.send_timeout_s):
                    if isinstance(item, _AudioOut):
                        await self._send_audio(item)
                    elif isinstance(item, _TurnEnd):
                        await self._finalize_turn(item.turn)
                    elif isinstance(item, _Close):
                        await self.ws.close(item.code, item.reason)
                        return
                    elif isinstance(item, _Text):
                        await self.ws.send_text(item.json)
                    elif isinstance(item, _History):
                        self._history_queued = False
                        await self._send_now(self._history_message())
                    elif isinstance(item, _ResumeToken):
                        await self._send_now(self._seal())
                    else:
                        await self.ws.send_text(item.model_dump_json())
        except TimeoutError:
            self._abort("send_timeout")
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # The peer went away mid-send; the receive loop sees the disconnect too.
            log.info("send failed", extra={"session_id": self.session_id, "error": repr(exc)})
        except Exception:
            log.exception("sender failed", extra={"session_id": self.session_id})
            raise

    async def _send_audio(self, item: _AudioOut) -> None:
        turn = item.turn
        if turn.interrupt_reason is not None:
            return  # queued before the interruption: never sent after `interrupted`
        if not turn.audio_started:
            turn.audio_started = True
            await self._send_now(AudioStartMessage(turn_id=turn.id))
        await self.ws.send_bytes(item.data)
        turn.sent_samples[item.clause] += len(item.data) // 2
        if turn.first_audio_at is None:
            turn.first_audio_at = time.perf_counter()
            metrics.TIME_TO_FIRST_AUDIO_SECONDS.labels(source=turn.source).observe(
                turn.first_audio_at - turn.user_end
            )

    async def _finalize_turn(self, turn: Turn) -> None:
        """Report an ended turn and write its reply to the history (once; later ``_TurnEnd`` are no-ops)."""
        if turn.finalized.done():
            return
        try:
            if turn.state is TurnState.SKIPPED:
                return
            if turn.interrupt_reason is not None:
                await self._send_now(InterruptedMessage(turn_id=turn.id, reason=turn.interrupt_reason))
            if turn.audio_started:
                await self._send_now(AudioEndMessage(turn_id=turn.id))
            spoken = turn.spoken_text()
            if turn.reply_started or spoken:
                await self._send_now(AssistantMessage(text=spoken, final=True, turn_id=turn.id))
            if turn.keep_history:
                self.history.add("assistant", spoken)
            await self._send_now(turn.report(time.perf_counter()))
            await self._send_now(self._seal())
            log.info("turn finished", extra={"session_id": self.session_id, **turn.log_fields()})
        finally:
            if not turn.finalized.done():
                turn.finalized.set_result(None)

    async def _send_now(self, message: BaseModel) -> None:
        await self.ws.send_text(message.model_dump_json())

    # -------------------------------------------------------------------------------------------- resume
    def _seal(self) -> ResumeTokenMessage:
        return seal(self.pod.resume, self.conversation_id, self.voice.name, self.voice.speed, self.history)

    def _resume(self, token: str) -> None:
        restored = restore(
            self.pod.resume,
            token,
            history=self.history,
            conversation_id=self.conversation_id,
            voices=self.pod.voices,
            started=bool(self._turn_seq),
            session_id=self.session_id,
        )
        self.conversation_id = restored.conversation_id
        if restored.voice is not None:
            self.voice.name = restored.voice
        if restored.speed is not None:
            self.voice.speed = restored.speed
        self.send(restored.message)

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
                    if self.input is None:
                        self._error_throttled("not_started", "send a start message before audio")
                    else:
                        await self.input.feed(data)
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
            code, text = describe_validation_error(exc)
            self._error(code, text)
            return
        if isinstance(message, StartMessage):
            self._on_start(message)
        elif isinstance(message, TextMessage):
            self._start_turn("text", text=message.text)
        elif isinstance(message, InterruptMessage):
            self._drop_speculation("aborted")
            if self.turn is not None:
                self._interrupt(self.turn, "client")
        elif isinstance(message, ResetMessage):
            self._on_reset()
        elif isinstance(message, ConfigureMessage):
            self._on_configure(message.voice, message.speed)
        elif isinstance(message, GetHistoryMessage) and not self._history_queued:
            # One answer per batch of requests the client has not yet read.
            self._history_queued = True
            self.send(_History())

    def _history_message(self) -> HistoryMessage:
        """The conversation (budget applied), without the system prompt: it is the operator's, not the user's."""
        entries = [HistoryEntry(role=m.role, content=m.content) for m in self.history.turns]
        return HistoryMessage(messages=entries)

    def _check_voice(self, voice: str | None) -> bool:
        if voice is not None and voice not in self.pod.voices:
            self._error("unknown_voice", f"unknown voice {voice!r}; voices: {', '.join(self.pod.voices)}")
            return False
        return True

    def _on_start(self, message: StartMessage) -> None:
        if self.input is not None:
            self._error("already_started", "the session is already started (send configure to change voice)")
            return
        if not self._check_voice(message.voice):
            return
        assert self.models is not None
        if message.resume_token is not None:
            self._resume(message.resume_token)
        # Voice and speed given in `start` win over the restored ones: the person just chose them.
        self.voice.name = message.voice or self.voice.name
        self.voice.speed = message.speed or self.voice.speed
        self.input = AudioInput(self.pod, self.models, message.sample_rate, self._on_input, self.session_id)
        self.send(
            StartedMessage(sample_rate=message.sample_rate, voice=self.voice.name, speed=self.voice.speed)
        )
        if message.resume_token is not None:
            self.send(_ResumeToken())

    def _on_configure(self, voice: str | None, speed: float | None) -> None:
        if not self._check_voice(voice):
            return
        self.voice.name = voice or self.voice.name
        self.voice.speed = speed or self.voice.speed
        rate = self.input.sample_rate if self.input is not None else STT_SAMPLE_RATE
        self.send(StartedMessage(sample_rate=rate, voice=self.voice.name, speed=self.voice.speed))
        self.send(_ResumeToken())

    def _on_reset(self) -> None:
        self._drop_speculation("aborted")
        turn = self.turn
        if turn is not None and not turn.finalized.done():
            # Also a turn that ended but whose reply the sender has not yet written to the history.
            turn.keep_history = False
            self._interrupt(turn, "reset")
        self.history.clear()
        self.send(HistoryClearedMessage())
        self.send(_ResumeToken())  # of the empty conversation: the old one is not resumable from here on

    def _on_input(self, event: InputEvent) -> None:
        """What the audio input stage heard."""
        speaking = self.turn if self.turn is not None and self.turn.interruptible_by_speech else None
        min_ms = self.settings.barge_in_min_speech_ms
        if isinstance(event, SpeechBegan):
            self.send(VadMessage(speaking=True))
        elif isinstance(event, StillSpeaking):
            if speaking is not None and event.speech_ms >= min_ms:
                self._interrupt(speaking, "barge_in")
        elif isinstance(event, Paused):
            self._speculate(event)
        elif isinstance(event, Resumed):
            if self._drop_speculation("discarded"):
                self._speculator.missed = True
        elif isinstance(event, Utterance):
            self.send(VadMessage(speaking=False))
            if self._commit_speculation(event):
                pass
            elif speaking is not None and event.speech_ms < min_ms:
                # Too short to interrupt the assistant: a cough or its own echo, not a turn.
                log.debug(
                    "short utterance ignored while the assistant speaks",
                    extra={"session_id": self.session_id},
                )
            else:
                self._start_turn("voice", audio=event.audio, user_end=event.user_end, decided=event.decided)
                if self.turn is not None and self._speculator.missed:
                    self.turn.speculation = "miss"
                self._speculator.missed = False
            if self._drain_utterance is not None:
                self._drain_utterance.set()
        elif isinstance(event, Partial):
            self.send(TranscriptMessage(text=event.text, final=False, turn_id=self._turn_seq + 1))
        elif isinstance(event, Refused):
            if event.fatal:
                self.close(
                    CloseCode.POLICY_VIOLATION, "audio far faster than real time", event.code, event.message
                )
            else:
                self._error_throttled(event.code, event.message)

    # --------------------------------------------------------------------------------------------- turns
    def _interrupt(self, turn: Turn, reason: InterruptReason) -> None:
        """Stop a turn now: nothing more of its audio leaves; its LLM stream closes; history keeps what was sent."""
        if not turn.interrupt(reason):
            return
        metrics.INTERRUPTIONS_TOTAL.labels(reason=reason).inc()
        self.end_turn(turn)
        if turn.task is not None:
            turn.task.cancel()
        log.info(
            "turn interrupted", extra={"session_id": self.session_id, "turn_id": turn.id, "reason": reason}
        )

    def _start_turn(
        self,
        source: TurnSource,
        *,
        audio: Audio | None = None,
        text: str | None = None,
        user_end: float | None = None,
        decided: float | None = None,
    ) -> None:
        self._drop_speculation("aborted")  # a typed turn while a pause was speculated on; else none left
        # Draining takes no new turns, except the one of the utterance that was under way when it began.
        finishing_utterance = (
            source == "voice" and self._drain_utterance is not None and not self._drain_utterance.is_set()
        )
        if self._closing or (self.draining and not finishing_utterance):
            self._error("shutting_down", "the server is shutting down; no new turns")
            return
        assert self._runner is not None
        refusal = self.rates.turn_refusal()
        if refusal is not None:
            self._error("rate_limited", refusal)
            return
        previous = self.turn
        if previous is not None and previous.active:
            if audio is not None and previous.audio is not None:
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
            text=text,
        )
        self.turn = turn
        turn.task = asyncio.create_task(self._runner.run(turn, previous, self), name=f"turn-{turn.id}")

    # ------------------------------------------------------------------------------ speculative end of turn
    def _speculate(self, event: Paused) -> None:
        """A pause: start the reply now, held, if it would be this utterance's turn (see :mod:`.speculation`)."""
        previous = self.turn
        runner = self._runner
        if (
            self._speculator.current is not None
            or runner is None
            or self.draining
            or self._closing
            or (previous is not None and previous.active)  # barge-in or more words: the normal path decides
        ):
            return
        if self.pod.saturated:
            count_speculation("saturated")
            return
        turn = Turn(
            id=self._turn_seq + 1,
            source="voice",
            user_end=event.user_end,
            audio=event.audio,
            started_at=event.at,
        )
        self._speculator.start(turn, self, lambda outbox: runner.run(turn, previous, outbox))

    def _commit_speculation(self, event: Utterance) -> bool:
        """The end of turn on the paused audio: the speculative turn becomes the turn (True), else dropped."""
        speculation = self._speculator.take(event.after_pause)
        if speculation is None:
            return False
        self._turn_seq = speculation.turn.id
        self.turn = speculation.commit(event.decided)
        self._speculator.missed = False
        return True

    def _drop_speculation(self, outcome: Literal["discarded", "aborted"]) -> bool:
        return self._speculator.drop(outcome)
