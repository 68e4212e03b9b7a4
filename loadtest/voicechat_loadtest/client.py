"""One simulated voice user: connect, ``start``, speak real speech at real-time pace, measure the reply.

The measuring logic is sans-IO (:class:`ConnectRecorder`, :class:`TurnRecorder` consume timestamped server
messages) so that the asyncio client here and the gevent-friendly client Locust uses
(:mod:`voicechat_loadtest.sync_client`) measure the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from voicechat_loadtest.speech import Speech, frame_bytes
from voicechat_loadtest.stats import word_overlap
from voicechat_session.auth import MIN_KEY_BYTES, SUBPROTOCOL, TOKEN_PREFIX, mint_token
from voicechat_session.protocol import (
    OUTPUT_SAMPLE_RATE,
    AssistantMessage,
    AudioEndMessage,
    ErrorMessage,
    InterruptedMessage,
    ReadyMessage,
    ResumedMessage,
    ResumeTokenMessage,
    ServerMessage,
    StartMessage,
    TranscriptMessage,
    TurnMetricsMessage,
    server_message_adapter,
)

# Failures seen by the client, beside the server's own error codes (protocol.ErrorCode).
ClientErrorCode = Literal[
    "connect_refused",  # nothing listening / DNS failure
    "handshake_rejected",  # HTTP status instead of a WebSocket upgrade (wrong path, proxy, full pod)
    "handshake_failed",
    "connect_timeout",
    "ready_timeout",  # socket open, no `ready`
    "turn_timeout",  # speech sent, reply not finished in time
    "closed",  # the server closed the connection unexpectedly (a dropped connection)
    "interrupted",  # the server interrupted our reply (it heard speech we did not send)
    "bad_message",  # the server sent something the protocol does not allow
]
DEFAULT_FRAME_MS = 20
DEFAULT_MATCH_THRESHOLD = 0.8
MAX_SERVER_FRAME = 4 * 1024 * 1024


class BadTargetError(Exception):
    """The target is unusable (bad URL, nothing listening, not a session service, not ready, full)."""


def ws_url(url: str) -> str:
    """Accept ``ws(s)://host:port/ws`` or the service's ``http(s)://host:port`` base URL; return the WS URL."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise BadTargetError(f"invalid target URL {url!r}: expected ws://HOST:PORT/ws or http://HOST:PORT")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def http_base(url: str) -> str:
    """The service's HTTP base (where /readyz lives) for a target URL."""
    parts = urlsplit(ws_url(url))
    return urlunsplit(({"ws": "http", "wss": "https"}[parts.scheme], parts.netloc, "", "", ""))


# ------------------------------------------------------------------------------------------- results
class ConnectSample(BaseModel):
    """One connection attempt. Times in seconds; ``at_s`` is the offset from the start of the run."""

    user: int
    at_s: float
    connect_s: float | None = None  # dial → `ready` received (what a user waits for)
    handshake_s: float | None = None  # dial → WebSocket open
    server_connect_ms: float | None = None  # the server's own accepted → ready
    session_id: str | None = None
    sharing: str | None = None
    error: str | None = None
    error_message: str | None = None
    dropped: bool = False  # closed by the server later, while we still used it


class TurnSample(BaseModel):
    """One spoken turn. ``ttfa_s``: end of our speech → first audio frame; ``turn_s``: → ``audio_end``."""

    user: int
    turn: int
    at_s: float
    utterance: str
    speech_s: float
    ttfa_s: float | None = None
    turn_s: float | None = None
    expected: str
    transcript: str = ""
    match_score: float = 0.0
    matched: bool = False
    reply: str = ""
    audio_s: float = 0.0
    server: TurnMetricsMessage | None = None
    error: str | None = None
    error_message: str | None = None
    interrupt_reason: str | None = None  # why the server interrupted our reply (error "interrupted")


# ------------------------------------------------------------------------------------- recorders
@dataclass
class ConnectRecorder:
    """Dial → WebSocket open → first server message (``ready``, or an error such as ``server_full``)."""

    dialed: float
    opened: float | None = None
    ready: ReadyMessage | None = None
    ready_at: float | None = None
    error: str | None = None
    error_message: str | None = None

    def on_open(self, t: float) -> None:
        self.opened = t

    def on_message(self, t: float, msg: ServerMessage | bytes) -> bool:
        """Feed the first message; returns True when the attempt is decided."""
        if isinstance(msg, ReadyMessage):
            self.ready, self.ready_at = msg, t
        elif isinstance(msg, ErrorMessage):
            self.fail(msg.code, msg.message)
        else:
            self.fail("bad_message", f"expected `ready` first, got {_describe(msg)}")
        return True

    def fail(self, code: str, message: str) -> None:
        if self.error is None:
            self.error, self.error_message = code, message

    def sample(self, user: int, origin: float) -> ConnectSample:
        ok = self.ready is not None and self.ready_at is not None and self.error is None
        return ConnectSample(
            user=user,
            at_s=self.dialed - origin,
            connect_s=(self.ready_at - self.dialed) if ok and self.ready_at is not None else None,
            handshake_s=(self.opened - self.dialed) if self.opened is not None else None,
            server_connect_ms=self.ready.connect_ms if self.ready else None,
            session_id=self.ready.session_id if self.ready else None,
            sharing=self.ready.sharing if self.ready else None,
            error=self.error,
            error_message=self.error_message,
        )


@dataclass
class TurnRecorder:
    """Consumes the server's messages for one spoken turn and decides when the turn is over.

    Messages of earlier turns (``turn_id <= after_turn_id``) are ignored. If the server's VAD splits our
    utterance into two turns, the later turn's reply is the one measured.
    """

    speech: Speech
    after_turn_id: int
    started: float
    speech_end: float | None = None
    turn_id: int | None = None
    transcripts: list[str] = field(default_factory=list)
    reply_parts: list[str] = field(default_factory=list)
    reply_final: str | None = None
    first_audio: float | None = None
    audio_end: float | None = None
    audio_bytes: int = 0
    metrics: TurnMetricsMessage | None = None
    error: str | None = None
    error_message: str | None = None
    interrupt_reason: str | None = None

    @property
    def replied(self) -> bool:
        return self.audio_end is not None

    @property
    def complete(self) -> bool:
        """Over: failed, or the reply's audio ended and the server's turn metrics arrived."""
        return self.error is not None or (self.audio_end is not None and self.metrics is not None)

    def speech_ended(self, t: float) -> None:
        self.speech_end = t

    def fail(self, code: str, message: str) -> None:
        if self.error is None:
            self.error, self.error_message = code, message

    def _ours(self, turn_id: int) -> bool:
        return turn_id > self.after_turn_id and (self.turn_id is None or turn_id == self.turn_id)

    def on_audio(self, t: float, nbytes: int) -> None:
        if self.turn_id is None or self.speech_end is None:
            return  # audio of an earlier reply still in flight
        if self.first_audio is None:
            self.first_audio = t
        self.audio_bytes += nbytes

    def on_message(self, t: float, msg: ServerMessage) -> None:
        if isinstance(msg, TranscriptMessage) and msg.final and msg.turn_id > self.after_turn_id:
            if self.turn_id is not None and msg.turn_id > self.turn_id:
                # The VAD split our utterance: the first part's reply is superseded by this turn's.
                self.first_audio = self.audio_end = self.metrics = None
                self.reply_parts, self.reply_final, self.audio_bytes = [], None, 0
            self.turn_id = msg.turn_id
            self.transcripts.append(msg.text)
        elif isinstance(msg, ErrorMessage):
            self.fail(msg.code, msg.message)
        elif isinstance(msg, AssistantMessage) and self._ours(msg.turn_id):
            if msg.final:
                self.reply_final = msg.text
            else:
                self.reply_parts.append(msg.text)
        elif isinstance(msg, AudioEndMessage) and self._ours(msg.turn_id) and self.turn_id is not None:
            self.audio_end = t
        elif isinstance(msg, TurnMetricsMessage) and self._ours(msg.turn_id) and self.turn_id is not None:
            self.metrics = msg
        elif isinstance(msg, InterruptedMessage) and self._ours(msg.turn_id) and self.turn_id is not None:
            self.fail("interrupted", f"the server interrupted reply {msg.turn_id} ({msg.reason})")
            self.interrupt_reason = msg.reason
        elif isinstance(msg, ReadyMessage):
            self.fail("bad_message", "a second `ready` on the same connection")
        # started, vad, partial transcripts, audio_start, history_cleared, resume_token: nothing to measure.

    def on_closed(self, code: int | None, reason: str) -> None:
        self.fail("closed", f"connection closed by the server (code {code}{': ' + reason if reason else ''})")

    def sample(self, user: int, turn: int, origin: float, match_threshold: float) -> TurnSample:
        transcript = " ".join(part.strip() for part in self.transcripts).strip()
        score = word_overlap(self.speech.text, transcript)
        end = self.speech_end
        return TurnSample(
            user=user,
            turn=turn,
            at_s=self.started - origin,
            utterance=self.speech.name,
            speech_s=self.speech.duration_s,
            ttfa_s=(self.first_audio - end) if self.first_audio is not None and end is not None else None,
            turn_s=(self.audio_end - end) if self.audio_end is not None and end is not None else None,
            expected=self.speech.text,
            transcript=transcript,
            match_score=round(score, 4),
            matched=score >= match_threshold,
            reply=self.reply_final if self.reply_final is not None else "".join(self.reply_parts),
            audio_s=self.audio_bytes / 2 / OUTPUT_SAMPLE_RATE,
            server=self.metrics,
            error=self.error,
            error_message=self.error_message,
            interrupt_reason=self.interrupt_reason,
        )


def _describe(msg: ServerMessage | bytes) -> str:
    return f"{len(msg)} bytes of binary audio" if isinstance(msg, bytes) else f"`{msg.type}`"


def parse_server_message(raw: str | bytes) -> ServerMessage | bytes:
    """Binary frames are audio; text frames are validated against the protocol's server message union."""
    if isinstance(raw, bytes):
        return raw
    return server_message_adapter.validate_json(raw)


def describe_handshake_error(url: str, err: Exception) -> tuple[str, str]:
    """(error code, one-line explanation) for a failed WebSocket open."""
    if isinstance(err, InvalidStatus):
        status = err.response.status_code
        hint = {
            404: "no WebSocket endpoint at this path (wrong URL, or not a VoiceChat session service)",
            403: "WebSocket refused at this path (wrong URL, or not a VoiceChat session service)",
            503: "service unavailable (not ready, full or draining)",
        }.get(status, "the server refused the WebSocket upgrade")
        return "handshake_rejected", f"{url}: HTTP {status}: {hint}"
    if isinstance(err, TimeoutError):
        return "connect_timeout", f"{url}: timed out opening the WebSocket"
    if isinstance(err, InvalidHandshake):
        return "handshake_failed", f"{url}: WebSocket handshake failed: {err}"
    if isinstance(err, OSError):
        return (
            "connect_refused",
            f"{url}: cannot connect ({err.strerror or err}): is anything listening there?",
        )
    return "handshake_failed", f"{url}: {type(err).__name__}: {err}"


def read_auth_key(path: Path) -> bytes:
    """The HS256 key in ``path`` (a copy of the service's Secret), checked as the service checks it."""
    try:
        key = path.read_bytes().strip()
    except OSError as err:
        raise BadTargetError(f"cannot read the access-token key {path}: {err.strerror or err}") from err
    if len(key) < MIN_KEY_BYTES:
        raise BadTargetError(
            f"the access-token key in {path} has {len(key)} bytes; the service needs {MIN_KEY_BYTES}+"
        )
    return key


@dataclass(frozen=True)
class ClientOptions:
    frame_ms: int = DEFAULT_FRAME_MS
    connect_timeout_s: float = 30.0
    ready_timeout_s: float = 180.0  # sharing=connection loads models per connection: slow under load
    turn_timeout_s: float = 60.0
    metrics_grace_s: float = 2.0  # after audio_end, how long turn_metrics may take
    match_threshold: float = DEFAULT_MATCH_THRESHOLD
    voice: str | None = None
    speed: float | None = None
    auth_key: bytes | None = field(default=None, repr=False)
    """HS256 key of the target's access tokens: each connection presents a fresh token of its own."""
    token_ttl_s: float = 600.0

    def subprotocols(self, user: int) -> list[Subprotocol] | None:
        """The WebSocket subprotocols carrying a fresh access token for ``user`` (None without a key).

        Each simulated user is its own subject (``loadtest-N``), as each person of an application is, so the
        service's per-subject limits apply to the load as they would to real users.
        """
        if self.auth_key is None:
            return None
        token = mint_token(self.auth_key, f"loadtest-{user}", ttl_s=self.token_ttl_s)
        return [Subprotocol(SUBPROTOCOL), Subprotocol(TOKEN_PREFIX + token)]


AUTH_KEY_FILE_ENV = "VOICECHAT_LOADTEST_AUTH_KEY_FILE"


def options_from_environment() -> ClientOptions:
    """Options of users started by a tool without our CLI (Locust): the token key from the environment."""
    key_file = os.environ.get(AUTH_KEY_FILE_ENV)
    return ClientOptions(auth_key=read_auth_key(Path(key_file)) if key_file else None)


# ------------------------------------------------------------------------------------ asyncio client
Closed = tuple[int | None, str]
"""The server closed the socket: (close code, reason)."""
Received = ServerMessage | bytes | Closed


class VoiceClient:
    """One user's WebSocket connection (asyncio)."""

    def __init__(self, url: str, user: int, origin: float, options: ClientOptions | None = None) -> None:
        self.url = ws_url(url)
        self.user = user
        self.origin = origin
        self.options = options or ClientOptions()
        self._ws: ClientConnection | None = None
        self._events: asyncio.Queue[tuple[float, Received]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._last_turn_id = 0
        self._turns = 0
        self._sample_rate: int | None = None
        self.closed_by_server = False
        self.closed = False
        """The socket is closed (its close is queued for whoever reads the events next)."""
        self.resume_token: str | None = None
        """The newest resume token the server sent (``ready``, then after every turn)."""

    async def connect(self) -> ConnectSample:
        rec = ConnectRecorder(dialed=time.perf_counter())
        try:
            self._ws = await ws_connect(
                self.url,
                subprotocols=self.options.subprotocols(self.user),
                open_timeout=self.options.connect_timeout_s,
                ping_interval=None,  # like a browser: drops we record are the server's, not keepalive's
                max_size=MAX_SERVER_FRAME,
            )
        except InvalidURI as err:
            raise BadTargetError(f"invalid target URL {self.url!r}: {err.msg}") from err
        except (OSError, TimeoutError, InvalidHandshake) as err:
            rec.fail(*describe_handshake_error(self.url, err))
            return rec.sample(self.user, self.origin)
        rec.on_open(time.perf_counter())
        self._reader = asyncio.create_task(self._read())
        try:
            t, item = await asyncio.wait_for(self._events.get(), self.options.ready_timeout_s)
        except TimeoutError:
            rec.fail("ready_timeout", f"no `ready` within {self.options.ready_timeout_s:.0f} s")
        else:
            if isinstance(item, tuple):
                rec.fail(
                    "closed", f"closed before `ready` (code {item[0]}{': ' + item[1] if item[1] else ''})"
                )
            else:
                rec.on_message(t, item)
                if isinstance(item, ReadyMessage) and item.resume_token and self.resume_token is None:
                    self.resume_token = item.resume_token
        if rec.error is not None:
            await self.close()
        return rec.sample(self.user, self.origin)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                t = time.perf_counter()
                try:
                    msg = parse_server_message(raw)
                except pydantic.ValidationError as err:
                    msg = ErrorMessage(code="internal", message=f"unparseable server message: {err}")
                if isinstance(msg, ResumeTokenMessage):
                    # Kept as it arrives: a drain sends the last one just before closing.
                    self.resume_token = msg.token
                self._events.put_nowait((t, msg))
        except ConnectionClosed:
            pass
        rcvd = self._ws.protocol.close_rcvd
        self.closed_by_server = rcvd is not None
        self.closed = True
        self._events.put_nowait(
            (time.perf_counter(), (rcvd.code, rcvd.reason) if rcvd else (None, "connection lost"))
        )

    async def start(self, sample_rate: int, resume_token: str | None = None) -> None:
        assert self._ws is not None, "connect() first"
        msg = StartMessage(
            sample_rate=sample_rate,
            voice=self.options.voice,
            speed=self.options.speed,
            resume_token=resume_token,
        )
        await self._ws.send(msg.model_dump_json(exclude_none=True))
        self._sample_rate = sample_rate

    async def resume(self, sample_rate: int, token: str, timeout_s: float = 10.0) -> ResumedMessage | None:
        """``start`` carrying ``token``; the server's ``resumed`` answer, or None (closed, or no answer)."""
        await self.start(sample_rate, resume_token=token)
        deadline = time.perf_counter() + timeout_s
        while (left := deadline - time.perf_counter()) > 0:
            try:
                t, item = await asyncio.wait_for(self._events.get(), left)
            except TimeoutError:
                return None
            if isinstance(item, tuple):
                self._events.put_nowait((t, item))
                return None
            if isinstance(item, ResumedMessage):
                return item
        return None

    async def _stream(self, speech: Speech, rec: TurnRecorder, stop: asyncio.Event) -> None:
        """Speech frames at real-time pace (each sent when a microphone would have captured it), then
        silence until the turn is over, as an open microphone keeps sending."""
        assert self._ws is not None
        frame_s = self.options.frame_ms / 1000
        silence = bytes(frame_bytes(speech.sample_rate, self.options.frame_ms))
        t0 = time.perf_counter()
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            for frame in speech.frames(self.options.frame_ms):
                sent += 1
                await asyncio.sleep(max(0.0, t0 + sent * frame_s - time.perf_counter()))
                await self._ws.send(frame)
            rec.speech_ended(time.perf_counter())
            while not stop.is_set():
                sent += 1
                await asyncio.sleep(max(0.0, t0 + sent * frame_s - time.perf_counter()))
                await self._ws.send(silence)

    async def turn(self, speech: Speech) -> TurnSample:
        """Say ``speech`` and wait for the whole reply."""
        if self._sample_rate != speech.sample_rate:
            await self.start(speech.sample_rate)
        self._turns += 1
        rec = TurnRecorder(speech=speech, after_turn_id=self._last_turn_id, started=time.perf_counter())
        stop = asyncio.Event()
        sender = asyncio.create_task(self._stream(speech, rec, stop))
        deadline = rec.started + speech.duration_s + self.options.turn_timeout_s
        try:
            while not rec.complete:
                now = time.perf_counter()
                limit = deadline
                if rec.replied and rec.audio_end is not None:
                    limit = min(deadline, rec.audio_end + self.options.metrics_grace_s)
                if now >= limit:
                    if not rec.replied:
                        rec.fail(
                            "turn_timeout",
                            f"no complete reply {self.options.turn_timeout_s:.0f} s after speech",
                        )
                    break
                try:
                    t, item = await asyncio.wait_for(self._events.get(), limit - now)
                except TimeoutError:
                    continue
                if isinstance(item, tuple):
                    rec.on_closed(*item)
                    self._events.put_nowait((t, item))  # later turns see the closed socket too
                elif isinstance(item, bytes):
                    rec.on_audio(t, len(item))
                else:
                    rec.on_message(t, item)
        finally:
            stop.set()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        if rec.turn_id is not None:
            self._last_turn_id = rec.turn_id
        return rec.sample(self.user, self._turns, self.origin, self.options.match_threshold)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
