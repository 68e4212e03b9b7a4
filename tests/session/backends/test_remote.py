"""Remote speech backends against the stand-in server: body decoding, voices, auth, errors, cancellation,
settings, and the loader's remote warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct

import numpy as np
import pytest
from pydantic import ValidationError

from tests.support.inprocess import bind_ephemeral
from tests.support.speech_server import SpeechServer, tone_length_s, wav_header
from voicechat_session.audio import float_to_pcm16, pcm16_to_float, resample
from voicechat_session.backends.base import (
    STT_SAMPLE_RATE,
    TTS_SAMPLE_RATE,
    AsyncSpeechToText,
    SpeechServerError,
    StreamingTextToSpeech,
)
from voicechat_session.backends.fake import utterance_tone
from voicechat_session.backends.loader import (
    close_models,
    load_models,
    run_inline,
    warm_up,
    warm_up_async,
)
from voicechat_session.backends.remote import (
    RemoteSpeechOptions,
    RemoteSTT,
    RemoteTTS,
    SpeechDecoder,
    StreamResampler,
    parse_voices,
)
from voicechat_session.settings import REMOTE_STT_MODEL, REMOTE_TTS_MODEL, SessionSettings

SCRIPT = ["what is the capital of france", "stop please"]


def _speech(seconds: float = 0.5, rate: int = TTS_SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)


def _split(data: bytes, rng: random.Random, largest: int = 97) -> list[bytes]:
    pieces, start = [], 0
    while start < len(data):
        size = rng.randint(1, largest)
        pieces.append(data[start : start + size])
        start += size
    return pieces


def _decode(pieces: list[bytes]) -> np.ndarray:
    decoder = SpeechDecoder()
    out = [decoder.feed(piece) for piece in pieces]
    out.append(decoder.flush())
    return np.concatenate(out)


def _settings(url: str, **overrides: object) -> SessionSettings:
    values: dict[str, object] = {
        "stt_backend": "remote",
        "stt_url": url,
        "tts_backend": "remote",
        "tts_url": url,
        "vad_backend": "energy",
        "speech_timeout_s": 2.0,
    }
    values.update(overrides)
    return SessionSettings(**values)  # type: ignore[arg-type]


def _tts(url: str, **overrides: object) -> RemoteTTS:
    settings = _settings(url, **overrides)
    return RemoteTTS(RemoteSpeechOptions.for_stage(settings, "tts"), default_voice=settings.tts_voice)


def _stt(url: str, **overrides: object) -> RemoteSTT:
    return RemoteSTT(RemoteSpeechOptions.for_stage(_settings(url, **overrides), "stt"))


async def _speak(tts: RemoteTTS, text: str = "Hello there, friend.", voice: str = "jf_alpha") -> np.ndarray:
    pieces = [piece async for piece in tts.stream_speech(text, voice, 1.0)]
    return np.concatenate(pieces)


def _closed_port_url() -> str:
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("seed", range(5))
def test_raw_pcm_split_at_odd_byte_boundaries_decodes_exactly(seed: int) -> None:
    data = float_to_pcm16(_speech())
    decoded = _decode(_split(data, random.Random(seed)))
    np.testing.assert_array_equal(decoded, pcm16_to_float(data))


def test_raw_pcm_one_byte_at_a_time_and_a_trailing_half_sample() -> None:
    data = float_to_pcm16(_speech(0.05))
    decoded = _decode([bytes([b]) for b in data] + [b"\x01"])  # the stray last byte is no sample
    np.testing.assert_array_equal(decoded, pcm16_to_float(data))


@pytest.mark.parametrize("cut", range(1, 60))
def test_wav_header_split_anywhere_is_parsed(cut: int) -> None:
    audio = _speech(0.1)
    # A LIST chunk before fmt, as some encoders write: skipped.
    listing = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"
    body = wav_header(TTS_SAMPLE_RATE, extra=listing) + float_to_pcm16(audio)
    decoder = SpeechDecoder()
    decoded = np.concatenate([decoder.feed(body[:cut]), decoder.feed(body[cut:]), decoder.flush()])
    assert decoder.format is not None
    assert decoder.format.rate == TTS_SAMPLE_RATE
    np.testing.assert_array_equal(decoded, pcm16_to_float(float_to_pcm16(audio)))


@pytest.mark.parametrize("rate", [22_050, 16_000, 44_100, 48_000])
def test_wav_at_another_rate_is_resampled_as_one_call_would(rate: int) -> None:
    source = pcm16_to_float(float_to_pcm16(_speech(0.7, rate)))
    body = wav_header(rate) + float_to_pcm16(source)
    decoded = _decode(_split(body, random.Random(rate), largest=3001))
    expected = resample(source, rate, TTS_SAMPLE_RATE)
    assert decoded.size == expected.size
    np.testing.assert_allclose(decoded, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("src", "dst"), [(22_050, 24_000), (48_000, 24_000), (16_000, 24_000), (24_000, 16_000)]
)
def test_stream_resampler_has_no_seams(src: int, dst: int) -> None:
    audio = _speech(1.0, src)
    resampler = StreamResampler(src, dst)
    rng = random.Random(7)
    out, start = [], 0
    while start < audio.size:
        size = rng.randint(1, 2000)
        out.append(resampler.process(audio[start : start + size]))
        start += size
    out.append(resampler.flush())
    np.testing.assert_allclose(np.concatenate(out), resample(audio, src, dst), atol=1e-5)


def test_stereo_and_float_wav_are_downmixed_to_mono() -> None:
    left, right = _speech(0.1), np.zeros(2400, dtype=np.float32)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    body = wav_header(TTS_SAMPLE_RATE, channels=2, bits=32, tag=3) + stereo.astype("<f4").tobytes()
    np.testing.assert_allclose(_decode(_split(body, random.Random(1))), left / 2, atol=1e-7)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (wav_header(TTS_SAMPLE_RATE, bits=8) + b"\x80" * 100, "unsupported format"),
        (b"RIFF" + struct.pack("<I", 100) + b"AVI " + b"\x00" * 40, "not a WAV"),
        (wav_header(TTS_SAMPLE_RATE)[:30], "without audio data"),
    ],
)
def test_unusable_wav_bodies_are_clear_errors(body: bytes, message: str) -> None:
    def decode_all() -> None:
        decoder = SpeechDecoder()
        decoder.feed(body)
        decoder.flush()

    with pytest.raises(SpeechServerError, match=message):
        decode_all()


def test_voices_shapes() -> None:
    assert parse_voices({"voices": ["af_heart", "am_adam"]}) == ["af_heart", "am_adam"]
    assert parse_voices(["a", {"name": "b"}, {"id": "c"}, {"voice_id": "d"}, 3]) == ["a", "b", "c", "d"]
    with pytest.raises(SpeechServerError, match="unknown shape"):
        parse_voices({"something": "else"})


# ------------------------------------------------------------------------------------------------- TTS
async def test_tts_streams_pcm_and_sends_the_request_openai_style() -> None:
    server = SpeechServer()
    async with server.serving() as url:
        tts = _tts(url)
        try:
            audio = await _speak(tts, "Hello there, friend.", "jm_kumo")
        finally:
            await tts.close()
    assert audio.size == round(tone_length_s("Hello there, friend.") * TTS_SAMPLE_RATE)
    assert server.speech_requests == [
        {
            "model": REMOTE_TTS_MODEL,
            "input": "Hello there, friend.",
            "voice": "jm_kumo",
            "speed": 1.0,
            "response_format": "pcm",
        }
    ]
    assert (server.completed, server.cancelled) == (1, 0)


async def test_tts_accepts_a_wav_body_at_another_rate() -> None:
    server = SpeechServer(body="wav", rate=22_050, chunk_bytes=999)
    async with server.serving() as url:
        tts = _tts(url)
        try:
            audio = await _speak(tts)
        finally:
            await tts.close()
    expected_s = tone_length_s("Hello there, friend.")
    assert audio.size / TTS_SAMPLE_RATE == pytest.approx(expected_s, abs=0.001)
    # Still the stand-in's 440 Hz tone after the round trip through 22.05 kHz.
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(audio.size, 1 / TTS_SAMPLE_RATE)[int(np.argmax(spectrum))] == pytest.approx(
        440, abs=5
    )


@pytest.mark.parametrize(
    ("voices", "shape", "expected"),
    [
        (["af_heart", "jf_alpha"], "kokoro", ["af_heart", "jf_alpha"]),
        (["jf_alpha", "x"], "list", ["jf_alpha", "x"]),
        (None, "kokoro", ["jf_alpha"]),  # no /audio/voices: the configured voice
    ],
)
async def test_voices_listing_and_fallback(voices: list[str] | None, shape: str, expected: list[str]) -> None:
    server = SpeechServer(voices=voices, voices_shape=shape)  # type: ignore[arg-type]
    async with server.serving() as url:
        tts = _tts(url, tts_voice="jf_alpha")
        try:
            assert await tts.refresh_voices() == expected
            assert tts.voices == expected
        finally:
            await tts.close()


async def test_api_keys_are_sent_as_bearer_tokens() -> None:
    server = SpeechServer(api_key="s3cret", transcripts=SCRIPT)
    async with server.serving() as url:
        tts = _tts(url, tts_api_key="s3cret")
        stt = _stt(url, stt_api_key="s3cret")
        try:
            await _speak(tts)
            assert await stt.transcribe_async(utterance_tone(0, 0.5)) == SCRIPT[0]
        finally:
            await tts.close()
            await stt.close()
    assert server.authorizations == ["Bearer s3cret", "Bearer s3cret"]


async def test_no_api_key_sends_no_authorization_and_401_is_explained() -> None:
    server = SpeechServer(api_key="s3cret")
    async with server.serving() as url:
        tts, stt = _tts(url), _stt(url)
        try:
            with pytest.raises(
                SpeechServerError, match=r"refused the credentials \(HTTP 401\); check tts_api_key"
            ):
                await _speak(tts)
            with pytest.raises(SpeechServerError, match="check stt_api_key"):
                await stt.transcribe_async(utterance_tone(0, 0.5))
        finally:
            await tts.close()
            await stt.close()
    assert server.authorizations == [None, None]


@pytest.mark.parametrize(
    ("status", "message"),
    [(500, r"text-to-speech server failed \(HTTP 500\)"), (400, r"rejected the request \(HTTP 400\)")],
)
async def test_error_statuses_map_to_clear_messages(status: int, message: str) -> None:
    server = SpeechServer(fail_status=status)
    async with server.serving() as url:
        tts = _tts(url)
        try:
            with pytest.raises(SpeechServerError, match=message) as raised:
                await _speak(tts)
        finally:
            await tts.close()
    assert "127.0.0.1" not in str(raised.value), "no URL in what a client may be shown"


async def test_unreachable_and_slow_servers() -> None:
    tts = _tts(_closed_port_url())
    try:
        with pytest.raises(SpeechServerError, match="text-to-speech server is unreachable"):
            await _speak(tts)
    finally:
        await tts.close()
    server = SpeechServer(first_byte_delay_s=5.0, transcribe_delay_s=5.0)
    async with server.serving() as url:
        tts, stt = _tts(url, speech_timeout_s=0.3), _stt(url, speech_timeout_s=0.3)
        try:
            with pytest.raises(SpeechServerError, match="did not answer in time"):
                await _speak(tts)
            with pytest.raises(SpeechServerError, match="speech-to-text server did not answer in time"):
                await stt.transcribe_async(utterance_tone(0, 0.5))
        finally:
            await tts.close()
            await stt.close()


async def test_a_stream_that_breaks_off_mid_body_is_an_error_after_the_audio_that_came() -> None:
    server = SpeechServer(drop_after_pieces=2, chunk_bytes=1000)
    async with server.serving() as url:
        tts = _tts(url)
        received: list[np.ndarray] = []

        async def consume() -> None:
            async for piece in tts.stream_speech("A clause long enough for several pieces.", "jf_alpha", 1.0):
                received.append(piece)

        try:
            with pytest.raises(SpeechServerError, match="connection to the text-to-speech server failed"):
                await consume()
        finally:
            await tts.close()
    assert sum(piece.size for piece in received) == 1000  # two pieces of 1000 bytes = 1000 samples


async def test_first_audio_arrives_before_the_body_ends_and_closing_stops_the_stream() -> None:
    release = asyncio.Event()
    server = SpeechServer(hold=release)
    async with server.serving() as url:
        tts = _tts(url)
        try:
            async with contextlib.aclosing(
                tts.stream_speech("A rather long clause to speak.", "jf_alpha", 1.0)
            ) as it:
                first = await asyncio.wait_for(anext(it), 5)
                assert first.size > 0
                assert (server.streams_open, server.completed) == (1, 0), "the body is still being held"
            # Leaving the block closed the response: the server sees its client go.
            await asyncio.wait_for(server.stream_cut.wait(), 5)
        finally:
            await tts.close()
    assert (server.cancelled, server.completed) == (1, 0)


# ------------------------------------------------------------------------------------------------- STT
async def test_stt_posts_a_16k_wav_with_model_and_language() -> None:
    server = SpeechServer(transcripts=SCRIPT)
    async with server.serving() as url:
        stt = _stt(url, stt_language="en")
        try:
            assert await stt.transcribe_async(utterance_tone(1, 0.8)) == SCRIPT[1]
            assert await stt.transcribe_async(np.zeros(8000, dtype=np.float32)) == ""
        finally:
            await stt.close()
    request = server.transcriptions[0]
    assert request["model"] == REMOTE_STT_MODEL
    assert request["language"] == "en"
    assert request["response_format"] == "json"
    assert request["rate"] == STT_SAMPLE_RATE
    assert request["seconds"] == pytest.approx(0.8)


# -------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("stage", ["stt", "tts"])
def test_remote_without_a_url_is_a_clear_error(stage: str) -> None:
    with pytest.raises(ValidationError, match=f"{stage}_backend=remote needs {stage}_url"):
        SessionSettings(**{f"{stage}_backend": "remote"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=f"{stage}_url must be an http"):
        SessionSettings(**{f"{stage}_backend": "remote", f"{stage}_url": "kokoro:8880/v1"})  # type: ignore[arg-type]


def test_remote_model_defaults_and_explicit_models() -> None:
    settings = _settings("http://speech:8880/v1")
    assert (settings.stt_model, settings.tts_model) == (REMOTE_STT_MODEL, REMOTE_TTS_MODEL)
    settings = _settings(
        "http://speech:8880/v1", stt_model="Systran/faster-whisper-small", tts_model="kokoro"
    )
    assert (settings.stt_model, settings.tts_model) == ("Systran/faster-whisper-small", "kokoro")
    assert SessionSettings().stt_model is None, "the embedded Whisper keeps its default"
    with pytest.raises(ValidationError, match="speech_timeout_s"):
        SessionSettings(speech_timeout_s=0)


# ---------------------------------------------------------------------------------------------- loader
async def test_loader_builds_remote_stages_and_warm_up_makes_one_real_request_each() -> None:
    server = SpeechServer(transcripts=SCRIPT)
    async with server.serving() as url:
        settings = _settings(url)
        models = load_models(settings)
        try:
            assert isinstance(models.stt, AsyncSpeechToText)
            assert isinstance(models.tts, StreamingTextToSpeech)
            with pytest.raises(TypeError, match="warm_up_async"):
                warm_up(models, settings)
            seconds = await warm_up_async(models, settings, run_inline)
        finally:
            await close_models(models)
    assert set(seconds) == {"tts", "vad", "stt"}
    assert (len(server.speech_requests), len(server.transcriptions)) == (1, 1)
    assert server.transcriptions[0]["seconds"] > tone_length_s("Hello")  # it heard the synthesized speech


async def test_warm_up_refuses_a_default_voice_the_server_lacks() -> None:
    server = SpeechServer(voices=["af_heart"])
    async with server.serving() as url:
        settings = _settings(url, tts_voice="jf_alpha")
        models = load_models(settings)
        try:
            with pytest.raises(SpeechServerError, match="no voice tts_voice='jf_alpha'; voices: af_heart"):
                await warm_up_async(models, settings, run_inline)
        finally:
            await close_models(models)
