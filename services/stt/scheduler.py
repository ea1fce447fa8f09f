"""One bounded worker pool for every model call of the STT service, with priorities.

A flush (the user stopped talking: someone waits for the text) and a POST /transcribe
run before queued partial passes of other streams, so background work never sits on
the latency path for longer than the one call already running. A caller that stops
waiting (its stream flushed or closed) leaves a cancelled job that is skipped.

Partial passes also get at most `partial_duty` of the worker's time: after a pass of t
seconds the next one waits t * (1 / duty - 1). One speaker never reaches that (a pass of
~0.2 s every 0.5 s of audio); four speakers at once did, and their passes took a whole
core from the chat service, whose first tokens then came 1.7 s after STT was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal, TypeVar

from services.stt.metrics import INFERENCE_SECONDS, QUEUE_DEPTH

T = TypeVar("T")
Kind = Literal["batch", "final", "partial"]
_PRIORITY: dict[str, int] = {"final": 0, "batch": 0, "partial": 1}


class Scheduler:
    def __init__(self, workers: int = 1, partial_duty: float = 1.0) -> None:
        # One worker by default: parallel calls on one model only fight over the same cores.
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="stt")
        self._workers, self._running = workers, 0
        self._rest = 1.0 / partial_duty - 1.0  # idle time per second of partial pass
        self._partial_at = 0.0  # no partial pass starts before this (perf_counter)
        self._pushed = asyncio.Event()
        self._heap: list[tuple[int, int, str, Callable[[], Any], asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, kind: Kind, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job: Callable[[], Any] = partial(fn, *args, **kwargs)
        heapq.heappush(self._heap, (_PRIORITY[kind], next(self._seq), kind, job, fut))
        QUEUE_DEPTH.set(len(self._heap))
        self._pushed.set()
        if self._running < self._workers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._heap:
                if self._heap[0][2] == "partial" and (wait := self._partial_at - time.perf_counter()) > 0:
                    self._pushed.clear()  # rest, unless a flush or an upload comes in meanwhile
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._pushed.wait(), wait)
                    continue
                _, _, kind, job, fut = heapq.heappop(self._heap)
                QUEUE_DEPTH.set(len(self._heap))
                if fut.done():  # the caller gave up while it was queued
                    continue
                t0 = time.perf_counter()
                try:
                    result = await loop.run_in_executor(self._pool, job)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
                finally:
                    took = time.perf_counter() - t0
                    INFERENCE_SECONDS.labels(kind).observe(took)
                    if kind == "partial":
                        self._partial_at = time.perf_counter() + took * self._rest
        finally:
            self._running -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
