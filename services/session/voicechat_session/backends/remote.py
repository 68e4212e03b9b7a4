"""Speech on another machine: an OpenAI-compatible speech server (``tts_backend=remote``, ``stt_backend=remote``).

The API is OpenAI's audio API as Kokoro-FastAPI, Orpheus-FastAPI, Coqui XTTS API servers and speaches expose:

- TTS: ``POST {tts_url}/audio/speech`` JSON ``{model, input, voice, speed, response_format: "pcm"}``. The body
  is streamed and decoded as it arrives (:class:`SpeechDecoder`): raw PCM16 LE mono at 24 kHz as asked, or a
  WAV body (some servers ignore ``response_format``) at whatever rate its header says, resampled to 24 kHz.
- Voices: ``GET {tts_url}/audio/voices`` (Kokoro-FastAPI: ``{"voices": [...]}``; a bare list too); a server
  without that endpoint gets the configured ``tts_voice`` as its only voice.
- STT: ``POST {stt_url}/audio/transcriptions`` multipart (``file`` = 16 kHz WAV, ``model``, ``language``,
  ``response_format=json``) → ``{"text": ...}``.

Calls are async (they wait on the network, not on this pod's CPU) and every failure becomes a
:class:`~voicechat_session.backends.base.SpeechServerError` whose text is safe to show to a client.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
import wave
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from voicechat_session.audio import _ZERO_CROSSINGS, float_to_pcm16, resample
from voicechat_session.backends.base import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, Audio, SpeechServerError
from voicechat_session.settings import REMOTE_STT_MODEL, REMOTE_TTS_MODEL, SessionSettings

log = logging.getLogger(__name__)

Stage = Literal["stt", "tts"]
_STAGE_NAME: dict[Stage, str] = {"stt": "speech-to-text", "tts": "text-to-speech"}
_EMPTY = np.zeros(0, dtype=np.float32)
_WAVE_PCM = 1
_WAVE_FLOAT = 3
_WAVE_EXTENSIBLE = 0xFFFE
_MAX_WAV_HEADER = 64 * 1024
"""A WAV header (chunks before ``data``) longer than this is not a speech answer: refused, not buffered."""


@dataclass(frozen=True)
class RemoteSpeechOptions:
    url: str
    """Base URL (``…/v1``), without a trailing slash."""
    model: str
    api_key: str | None
    timeout_s: float
    language: str | None = None

    @classmethod
    def for_stage(cls, settings: SessionSettings, stage: Stage) -> RemoteSpeechOptions:
        if stage == "stt":
            url, key, model = settings.stt_url, settings.stt_api_key, settings.stt_model or REMOTE_STT_MODEL
        else:
            url, key, model = settings.tts_url, settings.tts_api_key, settings.tts_model or REMOTE_TTS_MODEL
        if not url:
            raise ValueError(f"{stage}_backend=remote needs {stage}_url")
        return cls(
            url=url.rstrip("/"),
            model=model,
            api_key=key.get_secret_value() if key is not None else None,
            timeout_s=settings.speech_timeout_s,
            language=settings.stt_language or None,
        )

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # One timeout for connect, each read (the gap between two pieces of a streamed answer) and write.
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout_s))


# ------------------------------------------------------------------------------------------------- errors
def status_error(stage: Stage, status: int) -> SpeechServerError:
    what = _STAGE_NAME[stage]
    if status in (401, 403):
        return SpeechServerError(
            f"the {what} server refused the credentials (HTTP {status}); check {stage}_api_key"
        )
    if status >= 500:
        return SpeechServerError(f"the {what} server failed (HTTP {status})")
    return SpeechServerError(f"the {what} server rejected the request (HTTP {status})")


@contextlib.contextmanager
def _mapped_errors(stage: Stage, url: str) -> Iterator[None]:
    """httpx and decoding failures → :class:`SpeechServerError` (the URL and details go to the log only)."""
    what = _STAGE_NAME[stage]
    try:
        yield
    except httpx.TimeoutException as exc:
        log.warning("speech server timed out", extra={"stage": stage, "url": url, "error": repr(exc)})
        raise SpeechServerError(f"the {what} server did not answer in time") from exc
    except httpx.ConnectError as exc:
        log.warning("speech server unreachable", extra={"stage": stage, "url": url, "error": repr(exc)})
        raise SpeechServerError(f"the {what} server is unreachable") from exc
    except httpx.HTTPError as exc:
        # Connected, then the exchange broke (the server dropped the connection mid-answer, a protocol error).
        log.warning("speech server connection failed", extra={"stage": stage, "url": url, "error": repr(exc)})
        raise SpeechServerError(f"the connection to the {what} server failed") from exc


async def _raise_for_status(stage: Stage, url: str, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    body = (await response.aread())[:500].decode("utf-8", "replace")
    log.warning(
        "speech server error",
        extra={"stage": stage, "url": url, "status": response.status_code, "body": body},
    )
    raise status_error(stage, response.status_code)


# ------------------------------------------------------------------------------------------------ decoding
class StreamResampler:
    """:func:`voicechat_session.audio.resample` over a stream, exactly: the same samples as one call on the
    whole signal, with no seams between pieces.

    Output sample ``n`` depends on input within ``margin`` samples of ``n * src / dst``; only outputs whose
    inputs all arrived are emitted, and consumed input is dropped in whole multiples of the rate ratio's
    denominator (the polyphase filter is shift-invariant for those), keeping ``margin`` samples of context.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        g = math.gcd(src_rate, dst_rate)
        self.src_rate, self.dst_rate = src_rate, dst_rate
        self._up, self._down = dst_rate // g, src_rate // g
        # The filter's half-width in input samples, with room to spare.
        self._margin = (_ZERO_CROSSINGS + 2) * max(1, math.ceil(src_rate / dst_rate)) + 2
        self._buf = _EMPTY
        self._emitted = 0
        """Outputs of ``resample(self._buf)`` already handed out."""

    def process(self, audio: Audio) -> Audio:
        self._buf = np.concatenate([self._buf, np.asarray(audio, dtype=np.float32)])
        ready = (self._buf.size - self._margin) * self._up // self._down
        if ready <= self._emitted:
            return _EMPTY
        out = resample(self._buf, self.src_rate, self.dst_rate)[self._emitted : ready]
        self._emitted = ready
        # Drop input no future output needs: whole periods of `down` input samples (= `up` outputs).
        periods = max(0, (self._emitted * self._down // self._up - self._margin) // self._down)
        if periods:
            self._buf = self._buf[periods * self._down :]
            self._emitted -= periods * self._up
        return out

    def flush(self) -> Audio:
        out = resample(self._buf, self.src_rate, self.dst_rate)[self._emitted :]
        self._buf, self._emitted = _EMPTY, 0
        return out


@dataclass(frozen=True)
class WavFormat:
    rate: int
    channels: int
    sample_format: Literal["s16", "f32"]

    @property
    def frame_bytes(self) -> int:
        return self.channels * (2 if self.sample_format == "s16" else 4)


def _parse_fmt(chunk: bytes) -> WavFormat:
    if len(chunk) < 16:
        raise SpeechServerError("the text-to-speech server sent a malformed WAV header")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", chunk[:16])
    if tag == _WAVE_EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack("<H", chunk[24:26])[0]  # the sub-format GUID starts with the format tag
    if channels < 1 or rate < 1000:
        raise SpeechServerError(f"the text-to-speech server sent a WAV of {channels} channels at {rate} Hz")
    if tag == _WAVE_PCM and bits == 16:
        return WavFormat(rate, channels, "s16")
    if tag == _WAVE_FLOAT and bits == 32:
        return WavFormat(rate, channels, "f32")
    raise SpeechServerError(
        f"the text-to-speech server sent WAV audio in an unsupported format (tag {tag}, {bits} bits)"
    )


class SpeechDecoder:
    """Bytes of an ``/audio/speech`` body, in pieces of any size → 24 kHz float32 mono, as they arrive.

    The first four bytes decide: ``RIFF`` is a WAV (its header is parsed, the rest are its samples; the data
    size is ignored, since streaming servers write a placeholder), anything else raw PCM16 LE at
    ``pcm_rate``. Bytes of a frame split between two pieces wait for the rest.
    """

    def __init__(self, pcm_rate: int = TTS_SAMPLE_RATE, out_rate: int = TTS_SAMPLE_RATE) -> None:
        self.pcm_rate = pcm_rate
        self.out_rate = out_rate
        self.format: WavFormat | None = None
        self._head = bytearray()
        self._in_header = True
        self._carry = b""
        self._resampler: StreamResampler | None = None

    def feed(self, data: bytes) -> Audio:
        if self._in_header:
            self._head += data
            payload = self._parse_head()
            if payload is None:
                return _EMPTY
            data = payload
        return self._samples(self._carry + data)

    def flush(self) -> Audio:
        """The end of the body: what is still buffered (a frame cut short is dropped)."""
        tail = _EMPTY
        if self._in_header:
            if len(self._head) >= 4:  # a RIFF header that never reached its data chunk
                raise SpeechServerError("the text-to-speech server sent a WAV without audio data")
            self._start(WavFormat(self.pcm_rate, 1, "s16"))
            tail = self._samples(bytes(self._head))
        self._carry = b""
        if self._resampler is not None:
            tail = np.concatenate([tail, self._resampler.flush()])
        return tail

    def _start(self, fmt: WavFormat) -> None:
        self.format = fmt
        self._in_header = False
        if fmt.rate != self.out_rate:
            self._resampler = StreamResampler(fmt.rate, self.out_rate)

    def _parse_head(self) -> bytes | None:
        """The bytes after the header once it is complete (None: wait for more)."""
        head = bytes(self._head)
        if len(head) < 4:
            return None
        if head[:4] != b"RIFF":
            self._start(WavFormat(self.pcm_rate, 1, "s16"))
            return head
        if len(head) < 12:
            return None
        if head[8:12] != b"WAVE":
            raise SpeechServerError("the text-to-speech server sent a RIFF body that is not a WAV")
        pos, fmt = 12, None
        while len(head) >= pos + 8:
            chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
            if chunk_id == b"data":
                if fmt is None:
                    raise SpeechServerError("the text-to-speech server sent a WAV without a format header")
                self._start(fmt)
                return head[pos + 8 :]
            end = pos + 8 + size + (size & 1)  # chunks are padded to an even size
            if len(head) < end:
                break
            if chunk_id == b"fmt ":
                fmt = _parse_fmt(head[pos + 8 : pos + 8 + size])
            pos = end
        if len(head) > _MAX_WAV_HEADER:
            raise SpeechServerError("the text-to-speech server sent a WAV header without audio data")
        return None

    def _samples(self, data: bytes) -> Audio:
        fmt = self.format
        assert fmt is not None
        usable = len(data) - len(data) % fmt.frame_bytes
        self._carry = data[usable:]
        if not usable:
            return _EMPTY
        if fmt.sample_format == "s16":
            samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
        if fmt.channels > 1:
            samples = samples.reshape(-1, fmt.channels).mean(axis=1).astype(np.float32)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return samples


def encode_wav(audio: Audio, rate: int = STT_SAMPLE_RATE) -> bytes:
    """Mono PCM16 WAV of float32 audio (what ``/audio/transcriptions`` gets as its file)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(float_to_pcm16(np.asarray(audio, dtype=np.float32)))
    return out.getvalue()


def parse_voices(raw: Any) -> list[str]:
    """Voice names from ``GET /audio/voices``: ``{"voices": [...]}`` or a bare list, of names or objects."""
    items = raw.get("voices", raw.get("data")) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise SpeechServerError("the text-to-speech server listed its voices in an unknown shape")
    names: list[str] = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict):
            name = item.get("name") or item.get("id") or item.get("voice_id")
            if isinstance(name, str):
                names.append(name)
    return names


# ------------------------------------------------------------------------------------------------ backends
class RemoteTTS:
    """:class:`~voicechat_session.backends.base.StreamingTextToSpeech` on an OpenAI-compatible server."""

    def __init__(self, options: RemoteSpeechOptions, default_voice: str) -> None:
        self.options = options
        self.default_voice = default_voice
        self._voices = [default_voice]
        self._client = options.client()

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    async def refresh_voices(self) -> list[str]:
        url = f"{self.options.url}/audio/voices"
        with _mapped_errors("tts", url):
            response = await self._client.get(url)
            if response.status_code in (404, 405, 501):
                # No voice listing (OpenAI itself, Orpheus-FastAPI, most look-alikes): trust the configured one.
                log.info("speech server lists no voices; using tts_voice", extra={"url": url})
                self._voices = [self.default_voice]
                return self.voices
            await _raise_for_status("tts", url, response)
            try:
                raw = response.json()
            except ValueError as exc:
                raise SpeechServerError(
                    "the text-to-speech server listed its voices as something not JSON"
                ) from exc
        self._voices = parse_voices(raw) or [self.default_voice]
        return self.voices

    async def stream_speech(self, text: str, voice: str, speed: float) -> AsyncGenerator[Audio, None]:
        url = f"{self.options.url}/audio/speech"
        payload = {
            "model": self.options.model,
            "input": text,
            "voice": voice,
            "speed": speed,
            "response_format": "pcm",
        }
        decoder = SpeechDecoder()
        with _mapped_errors("tts", url):
            # `async with`: leaving early (barge-in cancels the turn, or the consumer closes this generator)
            # closes the response, and with it the connection, so the server stops synthesizing.
            async with self._client.stream("POST", url, json=payload) as response:
                await _raise_for_status("tts", url, response)
                async for data in response.aiter_bytes():
                    piece = decoder.feed(data)
                    if piece.size:
                        yield piece
        tail = decoder.flush()
        if tail.size:
            yield tail

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def close(self) -> None:
        await self._client.aclose()


class RemoteSTT:
    """:class:`~voicechat_session.backends.base.AsyncSpeechToText` on an OpenAI-compatible server."""

    def __init__(self, options: RemoteSpeechOptions) -> None:
        self.options = options
        self._client = options.client()

    async def transcribe_async(self, audio: Audio) -> str:
        url = f"{self.options.url}/audio/transcriptions"
        form = {"model": self.options.model, "response_format": "json"}
        if self.options.language:
            form["language"] = self.options.language
        files = {"file": ("speech.wav", encode_wav(audio), "audio/wav")}
        with _mapped_errors("stt", url):
            response = await self._client.post(url, data=form, files=files)
            await _raise_for_status("stt", url, response)
        if response.headers.get("content-type", "").startswith("text/plain"):
            return response.text.strip()
        try:
            text = response.json().get("text")
        except (ValueError, AttributeError) as exc:
            raise SpeechServerError(
                "the speech-to-text server answered something that is not a transcript"
            ) from exc
        if not isinstance(text, str):
            raise SpeechServerError("the speech-to-text server answered without a transcript text")
        return text.strip()

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def close(self) -> None:
        await self._client.aclose()
