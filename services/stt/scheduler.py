"""One bounded worker pool for every model call of the STT service, with priorities.

A flush (the user stopped talking: someone waits for the text) and a POST /transcribe
run before queued partial passes of other streams, so background work never sits on
the latency path for longer than the one call already running. A caller that stops
waiting (its stream flushed or closed) leaves a cancelled job that is skipped.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, workers: int = 1) -> None:
        # One worker by default: parallel calls on one model only fight over the same cores.
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="stt")
        self._workers, self._running = workers, 0
        self._heap: list[tuple[int, int, str, Callable[[], Any], asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, kind: Kind, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job: Callable[[], Any] = partial(fn, *args, **kwargs)
        heapq.heappush(self._heap, (_PRIORITY[kind], next(self._seq), kind, job, fut))
        QUEUE_DEPTH.set(len(self._heap))
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
                    INFERENCE_SECONDS.labels(kind).observe(time.perf_counter() - t0)
        finally:
            self._running -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
