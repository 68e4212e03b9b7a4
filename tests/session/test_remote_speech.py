"""Spoken turns through the in-process service with remote STT and TTS (the stand-in speech server): the
turn, per-connection voice and speed, streaming first audio, barge-in closing the HTTP stream, errors, and
readiness while the speech server is down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support.abuse import wait_until
from tests.support.fake_llm import FakeLLM
from tests.support.inprocess import bind_ephemeral
from tests.support.session_app import SCRIPT, InProcessService, session_app
from tests.support.speech_server import SpeechServer, tone_length_s
from tests.support.ws_client import VoiceChatClient
from voicechat_session.backends.fake import utterance_tone
from voicechat_session.backends.remote import RemoteSTT, RemoteTTS
from voicechat_session.clauses import ClauseSplitter, speakable
from voicechat_session.pool import Priority

RATE = 16_000
SHORT_REPLY = "Paris is the capital of France."
LONG_REPLY = " ".join(f"Sentence number {i} of a long story, told slowly." for i in range(12))


def remote(url: str) -> dict[str, Any]:
    return {"stt_backend": "remote", "stt_url": url, "tts_backend": "remote", "tts_url": url}


def clauses_of(text: str) -> list[str]:
    splitter = ClauseSplitter()
    chunks = splitter.push(text)
    if rest := splitter.flush():
        chunks.append(rest)
    return [speakable(chunk) for chunk in chunks]


@contextlib.asynccontextmanager
async def remote_service(
    speech: SpeechServer, llm: FakeLLM | None = None, *, startup_timeout_s: float = 30.0, **overrides: Any
) -> AsyncIterator[InProcessService]:
    async with (
        speech.serving() as url,
        session_app(llm, startup_timeout_s=startup_timeout_s, **remote(url), **overrides) as service,
    ):
        yield service


async def speak(client: VoiceChatClient, index: int, seconds: float = 0.6, silence_s: float = 0.8) -> None:
    await client.stream_audio(utterance_tone(index, seconds, RATE), RATE, trailing_silence_s=silence_s)


async def test_spoken_turn_with_remote_stt_and_tts_never_uses_the_cpu_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    speech = SpeechServer(transcripts=SCRIPT)
    async with remote_service(speech, FakeLLM(reply=SHORT_REPLY)) as service:
        pooled: list[str] = []
        run = service.pod.pool.run

        async def recording_run(priority: Priority, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            pooled.append(getattr(fn, "__qualname__", repr(fn)))
            return await run(priority, fn, *args, **kwargs)

        monkeypatch.setattr(service.pod.pool, "run", recording_run)
        warm_requests = len(speech.speech_requests)
        assert service.pod.voices == speech.voices
        async with VoiceChatClient.connect(service.ws_url) as client:
            assert client.ready is not None
            assert client.ready["voices"] == speech.voices
            await client.start(sample_rate=RATE, voice="jm_kumo", speed=1.25)
            await speak(client, 0)
            turn = await client.wait_turn(timeout_s=30)
    assert turn.transcript == SCRIPT[0]
    assert turn.assistant_final == SHORT_REPLY
    # Every clause was asked of the server with this connection's voice and speed, and all of it was played.
    requests = speech.speech_requests[warm_requests:]
    assert [r["input"] for r in requests] == clauses_of(SHORT_REPLY)
    assert {(r["voice"], r["speed"]) for r in requests} == {("jm_kumo", 1.25)}
    expected_s = sum(tone_length_s(text, 1.25) for text in clauses_of(SHORT_REPLY))
    assert turn.audio_seconds == pytest.approx(expected_s, abs=0.01)
    # Frames of output_chunk_ms (80 ms = 3840 bytes) whatever the server's piece sizes, a shorter last one per clause.
    frames = [e for e in turn.events if isinstance(e, bytes)]
    assert max(len(f) for f in frames) == 3840
    assert sum(len(f) == 3840 for f in frames) >= len(frames) - len(requests)
    transcription = speech.transcriptions[-1]
    assert transcription["rate"] == RATE
    assert transcription["model"] == "whisper-1"
    assert turn.metrics["stt_ms"] > 0
    assert turn.metrics["tts_first_chunk_ms"] > 0
    # Remote stages wait on the network, not in the pod's bounded pool (only the VAD runs locally, elsewhere).
    assert pooled == []


async def test_first_audio_leaves_before_the_clause_body_has_arrived() -> None:
    release = asyncio.Event()
    speech = SpeechServer()
    async with remote_service(
        speech, FakeLLM(reply="Hello there, this is one long clause to say.")
    ) as service:
        speech.hold = release  # after the warm-up: each stream stops after its first piece until released
        async with VoiceChatClient.connect(service.ws_url) as client:
            await client.send({"type": "text", "text": "Hi"})
            await client.wait_event(lambda e: isinstance(e, bytes), timeout_s=10)
            # Audio is playing while the server still holds the rest of that clause's body.
            assert speech.streams_open == 1
            assert speech.completed == 1  # the warm-up's stream only
            release.set()
            turn = await client.wait_turn(timeout_s=30)
    expected_s = sum(
        tone_length_s(text) for text in clauses_of("Hello there, this is one long clause to say.")
    )
    assert turn.audio_seconds == pytest.approx(expected_s, abs=0.01)
    assert not turn.metrics["interrupted"]


async def test_barge_in_closes_the_in_flight_speech_stream() -> None:
    release = asyncio.Event()
    speech = SpeechServer(transcripts=SCRIPT)
    async with remote_service(speech, FakeLLM(reply=SHORT_REPLY, replies={"story": LONG_REPLY})) as service:
        speech.hold = release  # the first clause's stream is mid-body when the user barges in
        async with VoiceChatClient.connect(service.ws_url) as client:
            await client.start(sample_rate=RATE)
            await client.send({"type": "text", "text": "Tell me a story."})
            audio_start = await client.wait_for("audio_start", timeout_s=10)
            await speak(client, 1)
            interrupted = await client.wait_for("interrupted", turn_id=audio_start["turn_id"], timeout_s=10)
            assert interrupted["reason"] == "barge_in"
            # The turn's cancellation closed the HTTP response: the server saw its client hang up.
            await asyncio.wait_for(speech.stream_cut.wait(), 10)
            assert speech.cancelled == 1
            release.set()
            await client.wait_for("turn_metrics", turn_id=audio_start["turn_id"] + 1, timeout_s=20)
            assert client.turn_result(audio_start["turn_id"] + 1).transcript == SCRIPT[1]


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (500, "tts_failed", "speech synthesis failed: the text-to-speech server failed (HTTP 500)"),
        (401, "stt_failed", "transcription failed: the speech-to-text server refused the credentials"),
    ],
)
async def test_speech_server_errors_reach_the_client_and_the_session_goes_on(
    status: int, code: str, message: str
) -> None:
    speech = SpeechServer(transcripts=SCRIPT)
    async with (
        remote_service(speech, FakeLLM(reply=SHORT_REPLY)) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        speech.fail_status = status
        if code == "stt_failed":
            await speak(client, 0)
        else:
            await client.send({"type": "text", "text": "Hi"})
        error = await client.wait_for("error", timeout_s=10)
        assert error["code"] == code
        assert error["message"].startswith(message)
        assert not error["fatal"]
        # The server recovers; so does the session, on the same connection.
        speech.fail_status = None
        mark = len(client.events)
        await client.send({"type": "text", "text": "Again?"})
        turn = await client.wait_turn(after=mark, timeout_s=20)
        assert turn.audio_seconds > 0


async def test_readyz_says_why_while_the_speech_server_is_down_then_recovers() -> None:
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/v1"
    async with session_app(FakeLLM(), **remote(url)) as service:
        response = await service.get("/readyz")
        assert response.status_code == 503
        reason = response.json()["reason"]
        assert reason == "speech server not ready: the text-to-speech server is unreachable"
        assert "127.0.0.1" not in reason
        speech = SpeechServer()
        async with speech.serving(port=port):
            # Retries back off to every 15 s at most: ready within one more round once the server is up.
            deadline = time.monotonic() + 30
            while (await service.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "not ready 30 s after the speech server came up"
                await asyncio.sleep(0.1)
            assert service.pod.voices == speech.voices
            assert len(speech.transcriptions) == 1, "the retried warm-up transcribed once"


async def test_sharing_per_connection_uses_and_closes_its_own_remote_clients() -> None:
    speech = SpeechServer(transcripts=SCRIPT)
    async with remote_service(speech, FakeLLM(reply=SHORT_REPLY), sharing="connection") as service:
        assert service.pod.models is None  # nothing shared: each connection builds its own
        async with VoiceChatClient.connect(service.ws_url) as client:
            await client.start(sample_rate=RATE)
            await speak(client, 0)
            turn = await client.wait_turn(timeout_s=30)
            (session,) = service.registry.sessions.values()
            models = session.models  # type: ignore[attr-defined]
            assert isinstance(models.stt, RemoteSTT)
            assert isinstance(models.tts, RemoteTTS)
            assert not models.stt.closed
        await wait_until(
            lambda: models.stt.closed and models.tts.closed, 10, "the connection's clients closed"
        )
    assert turn.transcript == SCRIPT[0]
    assert turn.audio_seconds > 0


@pytest.mark.models
async def test_spoken_turn_end_to_end_on_real_kokoro_and_whisper_behind_the_api() -> None:
    """The stand-in serves our real embedded Kokoro and Whisper: real speech in, real speech out, over HTTP."""
    from tests.support.speech import is_silent, kokoro_tts, speech_audio, words
    from voicechat_session.audio import resample
    from voicechat_session.backends.faster_whisper_stt import FasterWhisperSTT
    from voicechat_session.backends.loader import load_stt
    from voicechat_session.settings import SessionSettings

    whisper = load_stt(SessionSettings(workers=1))
    assert isinstance(whisper, FasterWhisperSTT)
    kokoro = kokoro_tts()
    # First-call costs (kernel choice, buffers) are paid here, not inside the session service's start.
    kokoro.synthesize("Warming up.", kokoro.voices[0], 1.0)
    question = "What is the capital of France?"
    question_audio = speech_audio(question)
    whisper.transcribe(question_audio)
    speech = SpeechServer(
        voices=kokoro.voices,
        synthesizer=kokoro.synthesize,
        transcriber=lambda audio, _rate: whisper.transcribe(audio),
        chunk_bytes=4096,
    )
    async with (
        remote_service(
            speech,
            FakeLLM(reply=SHORT_REPLY),
            vad_backend="silero",
            speech_timeout_s=60,
            startup_timeout_s=180,  # the warm-up runs real Kokoro and Whisper on a shared 2-core machine
        ) as service,
        VoiceChatClient.connect(service.ws_url) as client,
    ):
        await client.start(sample_rate=RATE)
        await client.stream_audio(question_audio, RATE, trailing_silence_s=1.0)
        turn = await client.wait_turn(timeout_s=120)
    assert turn.transcript is not None
    assert {"capital", "france"} <= set(words(turn.transcript)), turn.transcript
    assert turn.assistant_final == SHORT_REPLY
    reply_audio = turn.audio_samples
    assert turn.audio_seconds > 1.0
    assert not is_silent(reply_audio, 24_000)
    # What the client heard is the reply: Whisper hears it in the audio that came back over the socket.
    heard = whisper.transcribe(resample(reply_audio, 24_000, RATE))
    assert {"paris", "capital", "france"} <= set(words(heard)), heard
    assert turn.metrics["tts_first_chunk_ms"] > 0
