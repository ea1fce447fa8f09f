"""Blocking producers in worker threads: bounded, ordered, and stoppable."""

import asyncio
import threading
import time

import pytest

from shared.aio import iterate_in_thread


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
