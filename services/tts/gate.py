"""How many syntheses run at once on this machine's cores, and which goes first.

Every stream has a worker of its own, so without a bound N sessions would run N local
syntheses at once, each with its ONNX threads, on two cores: all of them slower, the
reply someone is waiting to hear begin among them. The gate lets `workers` syntheses run
(the cores divided by each synthesis's threads) and queues the rest, latency first: the
first text of a stream (a reply starting: its user hears nothing until it is spoken)
goes ahead of later texts (the rest of a reply, which its client will not play for
seconds), and each class is first come, first served. Cloud engines do no work here and
are not gated.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

from services.tts.metrics import GATE_WAIT


class SynthesisGate:
    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self.busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # (0 urgent / 1 bulk, arrival, wakeup)
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, urgent: bool) -> AsyncIterator[None]:
        """Hold one of the workers for the body; waits (urgent first) while all are busy."""
        if self.busy < self.workers and not self._waiting:
            self.busy += 1
        else:
            wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (0 if urgent else 1, next(self._order), wakeup))
            with GATE_WAIT.labels("first" if urgent else "later").time():
                try:
                    await wakeup  # the slot is handed over by _release: busy already counts it
                except asyncio.CancelledError:
                    if wakeup.done() and not wakeup.cancelled():
                        self._release()  # handed over just as the stream was cancelled: pass it on
                    else:
                        wakeup.cancel()  # _release skips it
                    raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, wakeup = heapq.heappop(self._waiting)
            if not wakeup.done():
                wakeup.set_result(None)
                return
        self.busy -= 1

    def waiting(self) -> int:
        return sum(not w.done() for _, _, w in self._waiting)

