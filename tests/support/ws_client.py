"""An async WebSocket client for the session service, for tests and scripts.

It records everything the server sends, in order (JSON messages as dicts, binary audio as ``bytes``), and
offers waits with deadlines on that record. ::

    async with VoiceChatClient.connect(ws_url) as client:
        await client.start(sample_rate=16_000)
        await client.stream_audio(samples, 16_000)            # real-time pace, then silence
        turn = await client.wait_turn()                        # transcript, reply, audio, metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voicechat_session.audio import float_to_pcm16, pcm16_to_float
from voicechat_session.protocol import OUTPUT_SAMPLE_RATE

Audio = npt.NDArray[np.float32]
Event = dict[str, Any] | bytes


@dataclass
class TurnResult:
    """What the server sent for one turn (one ``turn_id``)."""

    turn_id: int
    transcript: str | None
    partials: list[str]
    assistant_deltas: list[str]
    assistant_final: str | None
    audio: bytes
    metrics: dict[str, Any]
    interrupted: dict[str, Any] | None
    events: list[Event] = field(repr=False)

    @property
    def audio_samples(self) -> Audio:
        return pcm16_to_float(self.audio)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / 2 / OUTPUT_SAMPLE_RATE


class VoiceChatClient:
    def __init__(self, ws: ClientConnection, connected_at: float) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.received_at: list[float] = []
        self.ready: dict[str, Any] | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connect_s: float | None = None  # client-measured: connect() called → ready received
        self._connected_at = connected_at
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, timeout_s: float = 30.0, wait_ready: bool = True, max_size: int | None = 2**24
    ) -> AsyncIterator[VoiceChatClient]:
        started = time.perf_counter()
        ws = await asyncio.wait_for(websockets.connect(url, max_size=max_size), timeout_s)
        client = cls(ws, started)
        try:
            if wait_ready:
                client.ready = await client.wait_for("ready", timeout_s=timeout_s)
                client.connect_s = time.perf_counter() - started
            yield client
        finally:
            await client.close()

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                event: Event = frame if isinstance(frame, bytes) else json.loads(frame)
                async with self._changed:
                    self.events.append(event)
                    self.received_at.append(time.perf_counter())
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason
            async with self._changed:
                self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._reader, 5.0)

    # ------------------------------------------------------------------------------------------- sending
    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def start(self, sample_rate: int = 16_000, **options: Any) -> dict[str, Any]:
        mark = len(self.events)
        await self.send({"type": "start", "sample_rate": sample_rate, **options})
        return await self.wait_for("started", after=mark)

    async def stream_audio(
        self,
        audio: Audio,
        sample_rate: int,
        *,
        chunk_ms: int = 20,
        pace: float = 1.0,
        trailing_silence_s: float = 0.0,
    ) -> None:
        """Send ``audio`` as PCM16 frames at ``pace`` x real time (1.0 = like a microphone), then silence."""
        silence = np.zeros(round(trailing_silence_s * sample_rate), dtype=np.float32)
        samples = np.concatenate([np.asarray(audio, dtype=np.float32), silence])
        step = max(1, sample_rate * chunk_ms // 1000)
        started = time.perf_counter()
        for index, offset in enumerate(range(0, samples.size, step)):
            await self.ws.send(float_to_pcm16(samples[offset : offset + step]))
            # Sleep to the frame's due time (not a fixed sleep per frame: no drift on a loaded machine).
            due = started + (index + 1) * chunk_ms / 1000.0 / pace
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    # ------------------------------------------------------------------------------------------- waiting
    async def wait_event(
        self, predicate: Callable[[Event], bool], *, after: int = 0, timeout_s: float = 60.0
    ) -> tuple[int, Event]:
        """The first event at index ≥ ``after`` that matches; raises TimeoutError or ConnectionError."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                for index in range(after, len(self.events)):
                    if predicate(self.events[index]):
                        return index, self.events[index]
                if self.closed:
                    raise ConnectionError(
                        f"connection closed ({self.close_code} {self.close_reason!r}) before the awaited event; "
                        f"last events: {self.summary()[-8:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no matching event within {timeout_s:g} s; last events: {self.summary()[-8:]}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    async def wait_for(
        self, type_: str, *, after: int = 0, timeout_s: float = 60.0, **fields: Any
    ) -> dict[str, Any]:
        def matches(event: Event) -> bool:
            return (
                isinstance(event, dict)
                and event.get("type") == type_
                and all(event.get(k) == v for k, v in fields.items())
            )

        _index, event = await self.wait_event(matches, after=after, timeout_s=timeout_s)
        assert isinstance(event, dict)
        return event

    async def wait_closed(self, timeout_s: float = 30.0) -> tuple[int | None, str | None]:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code, self.close_reason

    async def wait_turn(self, *, after: int = 0, timeout_s: float = 120.0) -> TurnResult:
        """Everything about the next turn whose ``turn_metrics`` arrives at index ≥ ``after``."""
        index, end = await self.wait_event(
            lambda e: isinstance(e, dict) and e.get("type") == "turn_metrics",
            after=after,
            timeout_s=timeout_s,
        )
        assert isinstance(end, dict)
        return self.turn_result(int(end["turn_id"]), until=index + 1)

    def turn_result(self, turn_id: int, *, until: int | None = None) -> TurnResult:
        events = self.events[:until]
        mine: list[Event] = []
        audio = bytearray()
        in_audio = False
        for event in events:
            if isinstance(event, bytes):
                if in_audio:
                    audio += event
                    mine.append(event)
                continue
            if event.get("turn_id") != turn_id:
                continue
            mine.append(event)
            if event["type"] == "audio_start":
                in_audio = True
            elif event["type"] in ("audio_end", "interrupted"):
                in_audio = False

        def of_type(kind: str) -> list[dict[str, Any]]:
            return [e for e in mine if isinstance(e, dict) and e["type"] == kind]

        finals = [e["text"] for e in of_type("transcript") if e["final"]]
        assistant_finals = [e["text"] for e in of_type("assistant") if e["final"]]
        metrics = of_type("turn_metrics")
        interrupted = of_type("interrupted")
        return TurnResult(
            turn_id=turn_id,
            transcript=finals[-1] if finals else None,
            partials=[e["text"] for e in of_type("transcript") if not e["final"]],
            assistant_deltas=[e["text"] for e in of_type("assistant") if not e["final"]],
            assistant_final=assistant_finals[-1] if assistant_finals else None,
            audio=bytes(audio),
            metrics=metrics[-1] if metrics else {},
            interrupted=interrupted[0] if interrupted else None,
            events=mine,
        )

    async def history(self, timeout_s: float = 10.0) -> list[dict[str, str]]:
        mark = len(self.events)
        await self.send({"type": "get_history"})
        message = await self.wait_for("history", after=mark, timeout_s=timeout_s)
        return list(message["messages"])

    def errors(self, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[after:] if isinstance(e, dict) and e.get("type") == "error"]

    def summary(self) -> list[str]:
        """A readable digest of the events (for assertion messages)."""
        out: list[str] = []
        for event in self.events:
            if isinstance(event, bytes):
                if out and out[-1].startswith("<audio"):
                    count = int(out[-1].split()[1]) + 1
                    out[-1] = f"<audio {count} frames>"
                else:
                    out.append("<audio 1 frames>")
            else:
                text = json.dumps(event)
                out.append(text if len(text) < 160 else text[:157] + "...")
        return out


async def _probe(url: str, sentence: str, turns: int) -> None:
    """Speak ``sentence`` to a running service ``turns`` times; print connect latency and time to first audio."""
    from tests.support.speech import speech_audio

    audio = speech_audio(sentence)
    async with VoiceChatClient.connect(url, timeout_s=300) as client:
        assert client.ready is not None
        print(
            f"connect: server {client.ready['connect_ms']:.2f} ms, client {1000 * (client.connect_s or 0):.1f} ms"
        )
        await client.start(sample_rate=16_000)
        for _ in range(turns):
            mark = len(client.events)
            await client.stream_audio(audio, 16_000, trailing_silence_s=1.0)
            turn = await client.wait_turn(after=mark, timeout_s=300)
            m = turn.metrics
            print(
                f"turn {turn.turn_id}: heard {turn.transcript!r} → {turn.assistant_final!r}\n"
                f"  time to first audio {m['time_to_first_audio_ms']} ms (endpointing {m['endpointing_ms']}, "
                f"stt {m['stt_ms']}, llm ttft {m['llm_ttft_ms']}, tts first clause {m['tts_first_chunk_ms']}); "
                f"reply audio {turn.audio_seconds:.2f} s"
            )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Talk to a running session service and print its latencies.")
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8080/ws")
    parser.add_argument("--say", default="What is the capital of France?")
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(_probe(args.url, args.say, args.turns))


if __name__ == "__main__":
    main()
