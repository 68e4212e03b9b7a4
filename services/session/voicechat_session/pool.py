"""The pod's bounded pool for blocking model calls, most urgent call first.

With a FIFO pool, one user's long reply (clause after clause of TTS) queues ahead of another user's final
transcription and first clause, and every user's time to first audio grows with the others' reply lengths.
Here a waiting call with a lower ``Priority`` starts first. A slot is freed when the *thread* finishes, not
when an awaiting task is cancelled, so the pool never runs more calls than it has threads (= cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from enum import IntEnum
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Priority(IntEnum):
    """Lower runs first."""

    FIRST_AUDIO = 0  # on the path to a turn's first audio: final transcription, the first clause
    REPLY = 1  # the rest of a reply: playback is already ahead of it
    BACKGROUND = 2  # partial transcripts, model loads and warm-up


class PriorityPool:
    def __init__(self, workers: int, thread_name_prefix: str = "model") -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
        self._free = workers
        self._running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def idle(self) -> bool:
        """No call is running (threads included) or waiting."""
        return self._running == 0 and not any(not gate.done() for _, _, gate in self._waiting)

    @property
    def waiting(self) -> int:
        """Calls waiting for a thread."""
        return sum(1 for _, _, gate in self._waiting if not gate.done())

    async def run(self, priority: Priority, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        # A free slot implies no live waiter: _release hands slots to waiters before freeing them.
        if self._free > 0:
            self._free -= 1
        else:
            gate: asyncio.Future[None] = loop.create_future()
            heapq.heappush(self._waiting, (int(priority), next(self._order), gate))
            try:
                await gate
            except asyncio.CancelledError:
                if gate.done() and not gate.cancelled():
                    self._release()  # the slot was handed over just as we were cancelled: pass it on
                else:
                    gate.cancel()  # left in the heap; skipped when popped
                raise
        self._running += 1
        future: Future[T] = self._executor.submit(functools.partial(fn, *args, **kwargs))
        future.add_done_callback(lambda _f: self._finished_threadsafe(loop))
        return await asyncio.wrap_future(future)

    def _finished_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        # A call still running when its loop shut down (process exit, a test's loop) has no slot to free.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        self._running -= 1
        self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, gate = heapq.heappop(self._waiting)
            if not gate.done():
                gate.set_result(None)
                return
        self._free += 1

    def shutdown(self, wait: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
