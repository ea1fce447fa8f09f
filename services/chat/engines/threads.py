"""How many threads the next llama.cpp decode may use, given what else the machine is doing.

llama.cpp's threads meet at a barrier after every operation of the graph, so when another
process (the STT passes of other sessions, TTS) takes one of the cores, the thread left
without a core holds all the others: on this 2-core machine, four sessions at once made a
2-thread chat engine slower than a 1-thread one (p50 end of speech → first audio 2.0 s
against 0.9 s in bench/load.py), while alone the second thread is ~50 ms faster per turn.
So each decode uses `most` threads when that many cores are free, fewer when they are not.

"Free" is read from the kernel at each decode: the threads runnable right now on the
whole machine (`procs_running` in /proc/stat) minus this process's own (its scheduler
thread, and llama.cpp's workers still spinning after the last decode). The decision takes
the median of the last few readings (of the last 0.25 s), so one busy instant does not
flip it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

Reading = Callable[[], int | None]  # runnable threads of other processes now; None if unknown


def others_running() -> int | None:
    """Threads of other processes that are running or waiting for a core, now (Linux)."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                total = int(line.split()[1])
                break
        else:
            return None
        own = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            own += stat[stat.rindex(")") + 2] == "R"
        return max(0, total - own)
    except (OSError, ValueError):
        return None


class ThreadGovernor:
    def __init__(self, most: int, cores: int | None = None, reading: Reading = others_running, window: int = 5,
                 memory: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.most = most
        self.cores = cores or os.cpu_count() or 1
        self._reading, self._clock, self._memory = reading, clock, memory
        self._recent: deque[tuple[float, int]] = deque(maxlen=window)

    def pick(self) -> int:
        """Threads for the next decode: `most`, or as many cores as the others leave free (at least 1)."""
        if self.most <= 1:
            return 1
        now = self._reading()
        if now is None:
            return self.most
        t = self._clock()
        while self._recent and t - self._recent[0][0] > self._memory:  # a turn's first decode is not judged by
            self._recent.popleft()  # what ran during the last turn, seconds ago
        self._recent.append((t, now))
        others = statistics.median_low(n for _, n in self._recent)
        return max(1, min(self.most, self.cores - others))
