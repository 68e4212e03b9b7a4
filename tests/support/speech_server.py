"""A stand-in OpenAI-compatible speech server, the API Kokoro-FastAPI / Orpheus-FastAPI / XTTS servers expose:

- ``POST /v1/audio/speech`` (JSON ``model, input, voice, speed, response_format``): the audio streamed in
  ``chunk_bytes`` pieces (odd on purpose: samples split across pieces), raw PCM16 or a WAV with a streaming
  placeholder size, at ``rate`` Hz;
- ``GET /v1/audio/voices`` (Kokoro-FastAPI's ``{"voices": [...]}``, a bare list, or 404 with ``voices=None``);
- ``POST /v1/audio/transcriptions`` (multipart ``file`` WAV, ``model``, ``language``, ``response_format``).

Synthesis and transcription are the fake backends' by default (a 440 Hz tone as long as the text; the
scripted transcript the utterance's pitch selects), or any callables (real Kokoro and Whisper for the
``models`` test). Failure modes: ``fail_status`` (every request), ``api_key`` (401 without it), delays, and
``hold`` (a speech stream stops after its first piece until released), ``drop_after_pieces`` (a stream
breaks off mid-body). Every request is recorded, and every
speech stream that ended before its last byte (the client closed it) is counted. ::

    server = SpeechServer()
    async with server.serving() as url:          # http://127.0.0.1:PORT/v1
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.inprocess import serve_in_process
from voicechat_session.audio import Audio, float_to_pcm16, pcm16_to_float, resample
from voicechat_session.backends.base import TTS_SAMPLE_RATE
from voicechat_session.backends.fake import FAKE_VOICES, FakeSTT, FakeTTS

Synthesizer = Callable[[str, str, float], Audio]
"""(text, voice, speed) → 24 kHz float32 audio."""
Transcriber = Callable[[Audio, int], str]
"""(audio, sample rate) → text."""


def wav_header(rate: int, channels: int = 1, bits: int = 16, tag: int = 1, extra: bytes = b"") -> bytes:
    """A WAV header with the placeholder sizes streaming servers write (the length is not known yet)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + extra
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


@dataclass
class SpeechServer:
    voices: list[str] | None = field(default_factory=lambda: list(FAKE_VOICES))
    """Served by ``/v1/audio/voices``; None: that endpoint is missing (404), as on OpenAI-like servers."""
    voices_shape: Literal["kokoro", "list"] = "kokoro"
    body: Literal["pcm", "wav"] = "pcm"
    rate: int = TTS_SAMPLE_RATE
    chunk_bytes: int = 4801
    chunk_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    transcribe_delay_s: float = 0.0
    fail_status: int | None = None
    drop_after_pieces: int | None = None
    """Speech streams break off (the connection is dropped) after this many pieces."""
    api_key: str | None = None
    synthesizer: Synthesizer = field(default_factory=lambda: FakeTTS().synthesize)
    transcripts: Sequence[str] = ("hello there",)
    transcriber: Transcriber | None = None
    """None: the fake STT's script (``utterance_tone(i, …)`` is heard as ``transcripts[i]``)."""
    hold: asyncio.Event | None = None
    """When set here (not yet set as an event), each speech stream sends its first piece, then waits for it."""
    # What happened.
    speech_requests: list[dict[str, Any]] = field(default_factory=list)
    transcriptions: list[dict[str, Any]] = field(default_factory=list)
    """Form fields of each transcription request, plus ``rate`` and ``seconds`` of its WAV."""
    authorizations: list[str | None] = field(default_factory=list)
    streams_open: int = 0
    first_piece_sent: asyncio.Event = field(default_factory=asyncio.Event)
    completed: int = 0
    cancelled: int = 0
    stream_cut: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def speech(request: Request) -> Response:
            if (refusal := self._refusal(request)) is not None:
                return refusal
            body = await request.json()
            self.speech_requests.append(body)
            text, voice = body.get("input"), body.get("voice")
            if not isinstance(text, str) or not text.strip():
                return _error(422, "input is required")
            if self.voices is not None and voice not in self.voices:
                return _error(400, f"voice {voice!r} not found")
            # In a thread: a real model takes seconds, and this server shares its event loop with the test's.
            audio = await asyncio.to_thread(self.synthesizer, text, str(voice), float(body.get("speed", 1.0)))
            if self.rate != TTS_SAMPLE_RATE:
                audio = resample(audio, TTS_SAMPLE_RATE, self.rate)
            data = float_to_pcm16(audio)
            media = "audio/pcm"
            if self.body == "wav":
                data, media = wav_header(self.rate) + data, "audio/wav"
            return StreamingResponse(self._stream(request, data), media_type=media)

        async def voices(request: Request) -> Response:
            if (refusal := self._refusal(request)) is not None:
                return refusal
            if self.voices is None:
                return _error(404, "Not Found")
            listed: Any = {"voices": self.voices} if self.voices_shape == "kokoro" else self.voices
            return JSONResponse(listed)

        async def transcriptions(request: Request) -> Response:
            if (refusal := self._refusal(request)) is not None:
                return refusal
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(422, "file is required")
            with wave.open(io.BytesIO(await upload.read()), "rb") as wav:
                rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
                audio = pcm16_to_float(wav.readframes(wav.getnframes()))
            if width != 2 or channels != 1:
                return _error(422, "expected mono PCM16")
            fields = {key: value for key, value in form.items() if isinstance(value, str)}
            self.transcriptions.append({**fields, "rate": rate, "seconds": audio.size / rate})
            if self.transcribe_delay_s:
                await asyncio.sleep(self.transcribe_delay_s)
            if self.transcriber is not None:
                text = await asyncio.to_thread(self.transcriber, audio, rate)
            else:
                text = FakeSTT(self.transcripts).transcribe(audio)
            return JSONResponse({"text": text})

        return Starlette(
            routes=[
                Route("/v1/audio/speech", speech, methods=["POST"]),
                Route("/v1/audio/voices", voices),
                Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            ]
        )

    def _refusal(self, request: Request) -> Response | None:
        authorization = request.headers.get("authorization")
        self.authorizations.append(authorization)
        if self.fail_status is not None:
            return _error(self.fail_status, "the stand-in fails as told")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return _error(401, "Invalid API key")
        return None

    async def _stream(self, request: Request, data: bytes) -> AsyncIterator[bytes]:
        self.streams_open += 1
        finished = False
        try:
            if self.first_byte_delay_s:
                await asyncio.sleep(self.first_byte_delay_s)
            for index, start in enumerate(range(0, len(data), self.chunk_bytes)):
                if index == self.drop_after_pieces:
                    raise ConnectionResetError("speech stand-in: dropped the connection mid-body")
                yield data[start : start + self.chunk_bytes]
                if index == 0:
                    self.first_piece_sent.set()
                    if self.hold is not None:
                        try:
                            await self._held(request, self.hold)
                        except _ClientGone:
                            return
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
            finished = True
            self.completed += 1
        finally:
            self.streams_open -= 1
            if not finished:
                self.cancelled += 1
                self.stream_cut.set()

    @staticmethod
    async def _held(request: Request, release: asyncio.Event) -> None:
        """Wait for ``release``; a client that hangs up meanwhile ends the stream (nothing is being sent, so
        only asking the connection notices)."""
        while not release.is_set():
            if await request.is_disconnected():
                raise _ClientGone
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 0.02)

    @contextlib.asynccontextmanager
    async def serving(self, port: int = 0) -> AsyncIterator[str]:
        """Serve until the block exits; yields the API base URL (``…/v1``)."""
        async with serve_in_process(self.app(), port=port) as base_url:
            yield f"{base_url}/v1"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"error": message}}, status_code=status)


def tone_length_s(text: str, speed: float = 1.0) -> float:
    """How long the stand-in's default (tone) speech of ``text`` is."""
    return FakeTTS().duration_s(text, speed)


class _ClientGone(Exception):
    pass
