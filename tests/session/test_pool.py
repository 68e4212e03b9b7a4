"""The model pool: bounded by its threads, most urgent waiting call first, cancellation-safe."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from voicechat_session.pool import Priority, PriorityPool


class Gate:
    """A blocking 'model call' the test releases, recording the order calls started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    def call(self, name: str) -> str:
        with self.lock:
            self.started.append(name)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.release.wait(10)
        with self.lock:
            self.running -= 1
        return name


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a condition that worker threads change (no event to await), with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_urgent_calls_start_before_queued_background_and_reply_calls() -> None:
    pool, gate = PriorityPool(1), Gate()
    blocker = asyncio.create_task(pool.run(Priority.REPLY, gate.call, "running"))
    await _until(lambda: gate.started == ["running"])
    queued = [
        asyncio.create_task(pool.run(Priority.BACKGROUND, gate.call, "partial")),
        asyncio.create_task(pool.run(Priority.REPLY, gate.call, "later clause")),
        asyncio.create_task(pool.run(Priority.FIRST_AUDIO, gate.call, "other user's transcription")),
    ]
    await asyncio.sleep(0.05)
    assert not pool.idle
    gate.release.set()
    assert await asyncio.gather(blocker, *queued) == [
        "running",
        "partial",
        "later clause",
        "other user's transcription",
    ]
    assert gate.started == ["running", "other user's transcription", "later clause", "partial"]
    await _until(lambda: pool.idle)
    pool.shutdown()


async def test_never_more_calls_than_threads_even_when_waiters_are_cancelled() -> None:
    pool, gate = PriorityPool(2), Gate()
    tasks = [asyncio.create_task(pool.run(Priority.REPLY, gate.call, f"c{i}")) for i in range(6)]
    await _until(lambda: len(gate.started) == 2)
    # Cancel a running call's awaiter and a waiting one: the thread still runs, so no extra slot opens.
    tasks[0].cancel()
    tasks[3].cancel()
    await asyncio.sleep(0.05)
    assert len(gate.started) == 2
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[3], asyncio.CancelledError)
    assert sorted(r for r in results if isinstance(r, str)) == ["c1", "c2", "c4", "c5"]
    assert gate.max_running <= 2
    await _until(lambda: pool.idle)
    # The pool still works after cancellations: a new call gets a thread at once.
    assert await pool.run(Priority.FIRST_AUDIO, gate.call, "after") == "after"
    pool.shutdown()


async def test_errors_propagate_and_free_the_slot() -> None:
    pool = PriorityPool(1)

    def boom() -> None:
        raise ValueError("model failed")

    with pytest.raises(ValueError, match="model failed"):
        await pool.run(Priority.FIRST_AUDIO, boom)
    assert await pool.run(Priority.REPLY, str.upper, "ok") == "OK"
    pool.shutdown()
