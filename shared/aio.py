"""Async helpers: run a blocking generator in a worker thread without blocking the loop;
stop a task without hanging on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_DONE = object()
log = logging.getLogger("shared.aio")


async def iterate_in_thread(
    make: Callable[[], Iterator[T]], maxsize: int = 4, stop: threading.Event | None = None
) -> AsyncIterator[T]:
    """Yield the items of a blocking iterator produced in a worker thread.

    The queue is bounded so a slow consumer slows the producer; when the consumer
    stops early (cancelled, barge-in) the producer is told to stop at its next item.
    Pass your own `stop` event to let the producer see that sooner (e.g. while it waits
    for a lock before its first item).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
    stop = stop or threading.Event()

    def put(item: object) -> None:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                fut.result(timeout=0.1)
                return
            except TimeoutError:
                continue
        fut.cancel()

    def produce() -> None:
        if stop.is_set():
            return
        try:
            for item in make():
                if stop.is_set():
                    return
                put(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(exc)
            return
        put(_DONE)

    # A thread of its own: a long-lived stream must not hold one of the default pool's few
    # threads (min(32, cores + 4)), which every short asyncio.to_thread call shares.
    worker: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not worker.done():
            worker.set_result(None)

    def run() -> None:
        try:
            produce()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may be closed at shutdown
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name="stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # drain so a producer blocked on put() sees the stop flag promptly
        while not queue.empty():
            queue.get_nowait()
        await asyncio.shield(worker)


async def cancel_and_wait(task: asyncio.Task[Any], what: str, *, resend: float = 0.25, give_up: float = 3.0) -> bool:
    """Cancel `task` and wait until it has ended; True if it did. A cancel can be lost (a
    library's cleanup absorbs it, or Python 3.11's wait_for when the call it wraps ends at the
    same moment) and the task then runs on, so the cancel is sent again every `resend` s. After
    `give_up` s the caller goes on without it (logged): an input path must never hang on one."""
    if task is asyncio.current_task():
        return False
    crashed_before = task.done() and not task.cancelled() and task.exception() is not None
    waited, sent = 0.0, 0
    while not task.done() and waited < give_up:
        task.cancel()
        sent += 1
        await asyncio.wait({task}, timeout=resend)
        waited += resend
    if not task.done():
        log.error("%s did not stop within %.1f s of %d cancels; going on without it", what, give_up, sent)
        return False
    if sent > 1:
        log.warning("%s ignored a cancel; it stopped after %d", what, sent)
    if not task.cancelled() and (exc := task.exception()) is not None:  # retrieved: not "never retrieved" at exit
        if crashed_before:  # it had died on its own: say so (a bare await would have raised it)
            log.warning("%s had ended with %r", what, exc)
        else:
            log.debug("%s ended with %r as it was cancelled", what, exc)
    return True
