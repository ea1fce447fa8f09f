"""Blocking producers in worker threads: bounded, ordered, and stoppable."""

import asyncio
import contextlib
import threading
import time

import pytest

from shared.aio import cancel_and_wait, iterate_in_thread


async def test_items_arrive_in_order_and_errors_propagate():
    assert [x async for x in iterate_in_thread(lambda: iter(range(50)), maxsize=2)] == list(range(50))

    def boom():
        yield 1
        raise ValueError("engine failed")

    with pytest.raises(ValueError, match="engine failed"):
        [x async for x in iterate_in_thread(boom)]


async def test_consumer_leaving_early_stops_the_producer():
    produced = []

    def slow():
        for i in range(1000):
            produced.append(i)
            yield i
            time.sleep(0.001)

    async for x in iterate_in_thread(slow, maxsize=1):
        if x == 3:
            break
    await asyncio.sleep(0.1)
    assert len(produced) < 10  # it did not run on to the end


async def test_a_stop_event_reaches_a_producer_still_waiting():
    lock = threading.Lock()
    lock.acquire()  # someone else holds the model
    stop = threading.Event()
    started = []

    def waits_for_lock():
        while not lock.acquire(timeout=0.01):
            if stop.is_set():
                return
        started.append(True)
        yield 1

    gen = iterate_in_thread(waits_for_lock, stop=stop)
    task = asyncio.create_task(gen.__anext__())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gen.aclose()
    lock.release()
    await asyncio.sleep(0.05)
    assert started == [] and stop.is_set()


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_stops():
    seen = []

    async def stubborn() -> None:
        for _ in range(2):  # like a cleanup that absorbs the cancel and goes on
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("cancel")
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert await cancel_and_wait(task, "stubborn", resend=0.05)
    assert task.cancelled() and seen == ["cancel", "cancel"] and time.monotonic() - t0 < 1.0


async def test_a_task_that_never_stops_is_left_behind_in_bounded_time():
    deaf_to_cancels = True

    async def deaf() -> None:
        while deaf_to_cancels:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert not await cancel_and_wait(task, "deaf", resend=0.05, give_up=0.3)
    assert 0.3 <= time.monotonic() - t0 < 1.0 and not task.done()
    deaf_to_cancels = False
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    assert task.done()
