"""A turn's work after the user stopped: transcribe, then reply (LLM → clauses → TTS → real-time pacing).

It writes to an :class:`Outbox`, never to the socket: the connection implements the outbox (one ordered
queue to the client), tests can use a list, and a reply started before it is certain to be wanted (a
speculative end of turn) can write to a :class:`HeldOutbox` that keeps everything until ``commit()`` and
drops it on ``discard()``; cancelling the turn's task closes its LLM stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voicechat_session import metrics
from voicechat_session.audio import Audio, float_to_pcm16, pcm16_chunks
from voicechat_session.backends.base import SpeechServerError
from voicechat_session.backends.loader import ModelSet
from voicechat_session.clauses import ClauseSplitter, speakable
from voicechat_session.history import ChatMessage, ConversationHistory
from voicechat_session.llm import LLMError, StreamStats
from voicechat_session.pool import Priority
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE, AssistantMessage, ErrorCode, TranscriptMessage
from voicechat_session.serving import Pod
from voicechat_session.turn import Turn, TurnState

log = logging.getLogger(__name__)

TTS_LOOKAHEAD_CLAUSES = 2
"""Clauses synthesised ahead of playback: enough to hide TTS time, little to throw away on barge-in."""

ReplyEvent = TranscriptMessage | AssistantMessage


LLM_ERROR_TEXT: dict[ErrorCode, str] = {
    "llm_unavailable": "the language model is unavailable; try again shortly",
    "llm_timeout": "the language model took too long to answer",
    "llm_throttled": "the language model is busy (its provider's rate limit); try again in a moment",
    "llm_error": "the language model failed to answer",
}


class Outbox(Protocol):
    """Where a turn's output goes, in order."""

    def send(self, message: ReplyEvent) -> None: ...

    def send_audio(self, turn: Turn, clause: int, data: bytes) -> None:
        """One frame of clause ``clause``'s PCM16 audio."""
        ...

    def error(self, code: ErrorCode, message: str) -> None: ...

    def end_turn(self, turn: Turn) -> None:
        """The turn produces nothing more: finalize it (idempotent)."""
        ...


class HeldOutbox:
    """An outbox that holds writes until :meth:`commit` (then passes them on, and later ones straight
    through) or drops them on :meth:`discard`: for work started before it is known to be wanted."""

    def __init__(self, target: Outbox) -> None:
        self._target = target
        self._held: list[tuple[str, tuple[object, ...]]] = []
        self._on_commit: list[Callable[[], None]] = []
        self.committed = False
        self.discarded = False

    def on_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` at commit, before the held writes pass on (now, if already committed)."""
        if self.committed:
            action()
        elif not self.discarded:
            self._on_commit.append(action)

    def _write(self, method: str, *args: object) -> None:
        if self.discarded:
            return
        if self.committed:
            getattr(self._target, method)(*args)
        else:
            self._held.append((method, args))

    def send(self, message: ReplyEvent) -> None:
        self._write("send", message)

    def send_audio(self, turn: Turn, clause: int, data: bytes) -> None:
        self._write("send_audio", turn, clause, data)

    def error(self, code: ErrorCode, message: str) -> None:
        self._write("error", code, message)

    def end_turn(self, turn: Turn) -> None:
        self._write("end_turn", turn)

    def commit(self) -> None:
        if self.discarded:
            raise RuntimeError("a discarded outbox cannot be committed")
        self.committed = True
        actions, self._on_commit = self._on_commit, []
        for action in actions:
            action()
        held, self._held = self._held, []
        for method, args in held:
            getattr(self._target, method)(*args)

    def discard(self) -> None:
        self.discarded = True
        self._held.clear()
        self._on_commit.clear()


@dataclass
class Voice:
    """The connection's voice and speed; read per clause, so ``configure`` applies from the next one."""

    name: str
    speed: float


class TtsFailed(Exception):
    """Synthesis failed; the text is what the client is told."""


@dataclass
class ClauseAudio:
    """One clause's audio on its way to the client: pieces as the TTS produces them, then ``None``."""

    index: int
    pieces: asyncio.Queue[Audio | None] = dataclasses.field(default_factory=asyncio.Queue)


def _client_text(what: str, exc: Exception) -> str:
    # A speech server's failure says which and why (no URL or body); anything else stays in the log.
    return f"{what}: {exc}" if isinstance(exc, SpeechServerError) else what


class TurnRunner:
    """Runs turns of one connection (one at a time; the connection cancels a turn's task to stop it)."""

    def __init__(
        self,
        pod: Pod,
        models: ModelSet,
        history: ConversationHistory,
        voice: Voice,
        session_id: str,
    ) -> None:
        self.pod = pod
        self.models = models
        self.history = history
        self.voice = voice
        self.session_id = session_id
        self.lead_s = pod.settings.output_lead_ms / 1000.0
        self.chunk_ms = pod.settings.output_chunk_ms

    async def run(self, turn: Turn, previous: Turn | None, outbox: Outbox) -> None:
        """The turn's task: wait for the previous turn's history entry, transcribe, reply; always ends the turn."""
        try:
            if previous is not None:
                await asyncio.shield(previous.finalized)  # its reply enters the history first
            if not await self._transcribe(turn, outbox):
                return
            text = turn.text or ""
            if not text.strip():
                turn.advance(TurnState.SKIPPED)  # noise, not words: no reply
                return
            turn.advance(TurnState.REPLYING)
            messages = self._enter_history(turn, text, outbox)
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            audio_out: asyncio.Queue[ClauseAudio | None] = asyncio.Queue(maxsize=TTS_LOOKAHEAD_CLAUSES)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce_text(turn, messages, clauses, outbox))
                group.create_task(self._synthesize(turn, clauses, audio_out))
                group.create_task(self._pace(turn, audio_out, outbox))
        except* TtsFailed as failed:
            outbox.error("tts_failed", str(failed.exceptions[0]))
        except* Exception:
            log.exception("turn failed", extra={"session_id": self.session_id, "turn_id": turn.id})
            outbox.error("internal", "the turn failed unexpectedly")
        finally:
            if turn.active:
                turn.advance(TurnState.COMPLETED)
            outbox.end_turn(turn)

    def _enter_history(self, turn: Turn, text: str, outbox: Outbox) -> list[ChatMessage]:
        """The user's words enter the history, and the LLM gets the history with them.

        A speculative reply (a :class:`HeldOutbox` not yet committed) asks the LLM with the words added to a
        copy: they enter the real history only at commit, before any of the reply is passed on, so a
        discarded speculation leaves the history as it was.
        """

        def enter() -> None:
            self.history.add("user", text)
            metrics.TURNS_TOTAL.labels(source=turn.source).inc()

        if isinstance(outbox, HeldOutbox) and not outbox.committed:
            draft = dataclasses.replace(self.history, turns=list(self.history.turns))
            draft.add("user", text)
            outbox.on_commit(enter)
            return draft.messages()
        enter()
        return self.history.messages()

    async def _transcribe(self, turn: Turn, outbox: Outbox) -> bool:
        """Voice turns: the utterance → ``turn.text``. False (turn skipped) when transcription failed."""
        if turn.audio is None:
            return True
        started = time.perf_counter()
        try:
            text = await self.pod.transcribe(self.models.stt, turn.audio, Priority.FIRST_AUDIO)
        except Exception as exc:
            log.exception("transcription failed", extra={"session_id": self.session_id})
            outbox.error("stt_failed", _client_text("transcription failed", exc))
            turn.advance(TurnState.SKIPPED)
            return False
        turn.audio = None
        turn.text = text
        turn.stt_s = time.perf_counter() - started
        metrics.STT_SECONDS.observe(turn.stt_s)
        outbox.send(TranscriptMessage(text=text, final=True, turn_id=turn.id))
        return True

    async def _produce_text(
        self,
        turn: Turn,
        messages: list[ChatMessage],
        clauses: asyncio.Queue[str | None],
        outbox: Outbox,
    ) -> None:
        splitter = ClauseSplitter()
        stats = StreamStats()

        def on_delta(delta: str) -> None:
            if not turn.reply_started:
                turn.reply_started = True
                turn.ttft_s = stats.ttft_s
                if turn.ttft_s is not None:
                    metrics.LLM_TTFT_SECONDS.observe(turn.ttft_s)
            outbox.send(AssistantMessage(text=delta, final=False, turn_id=turn.id))
            splitter.max_growth = self.pod.chunk_growth_limit()
            for clause in splitter.push(delta):
                if turn.llm_first_phrase_s is None:
                    turn.llm_first_phrase_s = time.perf_counter() - stats.request_started
                clauses.put_nowait(clause)

        try:
            await self.pod.llm.stream(messages, stats, on_delta)
        except LLMError as exc:
            # Tell the client now, and still speak what did arrive (a reply cut by a deadline is better
            # than silence); the turn then ends normally.
            # The client gets a generic message and a correlation id; the LLM's body and URL stay in the log.
            ref = uuid.uuid4().hex[:12]
            log.warning(
                "LLM request failed",
                extra={"session_id": self.session_id, "turn_id": turn.id, "ref": ref, "error": str(exc)},
            )
            text = LLM_ERROR_TEXT.get(exc.code, "the language model failed to answer")
            outbox.error(exc.code, f"{text} (ref {ref})")
        if rest := splitter.flush():
            if turn.llm_first_phrase_s is None:
                turn.llm_first_phrase_s = time.perf_counter() - stats.request_started
            clauses.put_nowait(rest)
        clauses.put_nowait(None)

    async def _synthesize(
        self,
        turn: Turn,
        clauses: asyncio.Queue[str | None],
        audio_out: asyncio.Queue[ClauseAudio | None],
    ) -> None:
        """Speak clause after clause; a clause goes to playback with its first piece of audio (a remote TTS
        streams, so its first sound plays while the server still synthesizes the rest of the clause)."""
        tts = self.models.tts
        while (clause := await clauses.get()) is not None:
            text = speakable(clause)
            if not any(ch.isalnum() for ch in text):
                continue
            started = time.perf_counter()
            held_back = 0.0  # waiting for playback to take queued clauses: not synthesis time
            priority = Priority.FIRST_AUDIO if not turn.clauses else Priority.REPLY
            current: ClauseAudio | None = None
            try:
                # aclosing: a barge-in cancels this task wherever it waits, and the speech stream (a remote
                # server's HTTP response) is closed right then, not when the garbage collector finds it.
                async with contextlib.aclosing(
                    self.pod.speak(tts, text, self.voice.name, self.voice.speed, priority)
                ) as pieces:
                    async for samples in pieces:
                        if samples.size == 0:
                            continue
                        if turn.tts_first_s is None:
                            turn.tts_first_s = time.perf_counter() - started
                            metrics.TTS_FIRST_CHUNK_SECONDS.observe(turn.tts_first_s)
                        if current is None:
                            # The clause's length grows as pieces arrive; an interruption mid-clause
                            # measures what was heard against what had arrived by then.
                            current = ClauseAudio(turn.add_clause(text, 0))
                            put_at = time.perf_counter()
                            await audio_out.put(current)  # waits while TTS_LOOKAHEAD_CLAUSES are queued
                            held_back += time.perf_counter() - put_at
                        turn.clause_samples[current.index] += int(samples.size)
                        current.pieces.put_nowait(samples)
                if current is not None:
                    self.pod.record_synthesis(
                        time.perf_counter() - started - held_back,
                        turn.clause_samples[current.index] / OUTPUT_SAMPLE_RATE,
                    )
            except Exception as exc:
                log.exception("speech synthesis failed", extra={"session_id": self.session_id})
                raise TtsFailed(_client_text("speech synthesis failed", exc)) from exc
            finally:
                if current is not None:
                    current.pieces.put_nowait(None)
        await audio_out.put(None)

    @staticmethod
    def _stalled(turn: Turn, gap_s: float) -> None:
        if gap_s >= metrics.PLAYBACK_STALL_MIN_S:
            turn.playback_stalls += 1
            turn.playback_stall_s += gap_s
            metrics.PLAYBACK_STALLS_TOTAL.inc()
            metrics.PLAYBACK_STALL_SECONDS_TOTAL.inc(gap_s)

    async def _pace(self, turn: Turn, audio_out: asyncio.Queue[ClauseAudio | None], outbox: Outbox) -> None:
        """Queue audio at most ``output_lead_ms`` ahead of real-time playback, in ``output_chunk_ms`` frames.

        The client buffers only that much, so an interruption discards little unheard audio, and the text
        "actually sent" is close to the text actually heard. A clause's pieces are framed as they come (a
        frame leaves as soon as it is full), so streamed speech starts playing before its clause is done.
        """
        loop = asyncio.get_running_loop()
        playback_start: float | None = None
        queued_s = 0.0
        step = max(1, OUTPUT_SAMPLE_RATE * self.chunk_ms // 1000)

        async def send(index: int, chunk: bytes) -> None:
            nonlocal playback_start, queued_s
            now = loop.time()
            if playback_start is None or now - playback_start > queued_s:
                # First chunk, or the client ran dry waiting for TTS: playback (re)starts now.
                if playback_start is not None:
                    self._stalled(turn, now - playback_start - queued_s)
                playback_start = now - queued_s
            ahead = queued_s - (now - playback_start)
            if ahead > self.lead_s:
                await asyncio.sleep(ahead - self.lead_s)
            outbox.send_audio(turn, index, chunk)
            queued_s += len(chunk) / 2 / OUTPUT_SAMPLE_RATE

        while (clause := await audio_out.get()) is not None:
            pending = np.zeros(0, dtype=np.float32)
            while (samples := await clause.pieces.get()) is not None:
                pending = np.concatenate([pending, samples])
                whole = pending.size - pending.size % step
                for chunk in pcm16_chunks(pending[:whole], OUTPUT_SAMPLE_RATE, self.chunk_ms):
                    await send(clause.index, chunk)
                pending = pending[whole:]
            if pending.size:
                await send(clause.index, float_to_pcm16(pending))
