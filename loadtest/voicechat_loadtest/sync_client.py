"""The same simulated user as :class:`voicechat_loadtest.client.VoiceClient`, on blocking sockets and threads.

Locust runs users as gevent greenlets and monkey-patches sockets, ``time.sleep`` and threads, so this
client becomes cooperative there; it measures with the same recorders as the asyncio client.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pydantic
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from voicechat_loadtest.client import (
    MAX_SERVER_FRAME,
    BadTargetError,
    ClientOptions,
    ConnectRecorder,
    ConnectSample,
    Received,
    TurnRecorder,
    TurnSample,
    describe_handshake_error,
    parse_server_message,
    ws_url,
)
from voicechat_loadtest.speech import Speech, frame_bytes
from voicechat_session.protocol import ErrorMessage, StartMessage


class SyncVoiceClient:
    """One user's WebSocket connection (blocking)."""

    def __init__(self, url: str, user: int, origin: float, options: ClientOptions | None = None) -> None:
        self.url = ws_url(url)
        self.user = user
        self.origin = origin
        self.options = options or ClientOptions()
        self._ws: ClientConnection | None = None
        self._last_turn_id = 0
        self._turns = 0
        self._sample_rate: int | None = None

    def _recv(self, timeout: float) -> tuple[float, Received]:
        """Next server message with its arrival time; a ``(code, reason)`` tuple when the socket closed."""
        assert self._ws is not None
        try:
            raw = self._ws.recv(timeout=max(0.0, timeout))
        except ConnectionClosed:
            rcvd = self._ws.protocol.close_rcvd
            return time.perf_counter(), (rcvd.code, rcvd.reason) if rcvd else (None, "connection lost")
        t = time.perf_counter()
        try:
            return t, parse_server_message(raw)
        except pydantic.ValidationError as err:
            return t, ErrorMessage(code="internal", message=f"unparseable server message: {err}")

    def connect(self) -> ConnectSample:
        rec = ConnectRecorder(dialed=time.perf_counter())
        try:
            self._ws = ws_connect(
                self.url,
                subprotocols=self.options.subprotocols(self.user),
                open_timeout=self.options.connect_timeout_s,
                ping_interval=None,
                max_size=MAX_SERVER_FRAME,
            )
        except InvalidURI as err:
            raise BadTargetError(f"invalid target URL {self.url!r}: {err.msg}") from err
        except (OSError, TimeoutError, InvalidHandshake) as err:
            rec.fail(*describe_handshake_error(self.url, err))
            return rec.sample(self.user, self.origin)
        rec.on_open(time.perf_counter())
        try:
            t, item = self._recv(self.options.ready_timeout_s)
        except TimeoutError:
            rec.fail("ready_timeout", f"no `ready` within {self.options.ready_timeout_s:.0f} s")
        else:
            if isinstance(item, tuple):
                rec.fail("closed", f"closed before `ready` (code {item[0]})")
            else:
                rec.on_message(t, item)
        if rec.error is not None:
            self.close()
        return rec.sample(self.user, self.origin)

    def start(self, sample_rate: int) -> None:
        assert self._ws is not None, "connect() first"
        msg = StartMessage(sample_rate=sample_rate, voice=self.options.voice, speed=self.options.speed)
        self._ws.send(msg.model_dump_json(exclude_none=True))
        self._sample_rate = sample_rate

    def _stream(self, speech: Speech, rec: TurnRecorder, stop: threading.Event) -> None:
        assert self._ws is not None
        frame_s = self.options.frame_ms / 1000
        silence = bytes(frame_bytes(speech.sample_rate, self.options.frame_ms))
        t0 = time.perf_counter()
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            for frame in speech.frames(self.options.frame_ms):
                sent += 1
                time.sleep(max(0.0, t0 + sent * frame_s - time.perf_counter()))
                self._ws.send(frame)
            rec.speech_ended(time.perf_counter())
            while not stop.is_set():
                sent += 1
                time.sleep(max(0.0, t0 + sent * frame_s - time.perf_counter()))
                self._ws.send(silence)

    def turn(self, speech: Speech) -> TurnSample:
        if self._sample_rate != speech.sample_rate:
            self.start(speech.sample_rate)
        self._turns += 1
        rec = TurnRecorder(speech=speech, after_turn_id=self._last_turn_id, started=time.perf_counter())
        stop = threading.Event()
        sender = threading.Thread(target=self._stream, args=(speech, rec, stop), daemon=True)
        sender.start()
        deadline = rec.started + speech.duration_s + self.options.turn_timeout_s
        try:
            while not rec.complete:
                limit = deadline
                if rec.audio_end is not None:
                    limit = min(deadline, rec.audio_end + self.options.metrics_grace_s)
                now = time.perf_counter()
                if now >= limit:
                    if not rec.replied:
                        rec.fail(
                            "turn_timeout",
                            f"no complete reply {self.options.turn_timeout_s:.0f} s after speech",
                        )
                    break
                try:
                    t, item = self._recv(limit - now)
                except TimeoutError:
                    continue
                if isinstance(item, tuple):
                    rec.on_closed(*item)
                elif isinstance(item, bytes):
                    rec.on_audio(t, len(item))
                else:
                    rec.on_message(t, item)
        finally:
            stop.set()
            sender.join()
        if rec.turn_id is not None:
            self._last_turn_id = rec.turn_id
        return rec.sample(self.user, self._turns, self.origin, self.options.match_threshold)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
