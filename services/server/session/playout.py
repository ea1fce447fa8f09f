"""What the client has heard: the play clock, playback acks, and the echo reference.

Every chunk the client receives is placed on a wall-clock play clock (it plays after
what it already had); a playback ack (`played_ms` of a turn) corrects it. The same
placement feeds the echo guard, which compares the microphone with what the client
is playing at that moment. Times are `clock()` seconds (perf_counter; a fake in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from services.server.echo import EchoGuard
from shared.audio import OUT_RATE

ECHO_TAIL = 1.0  # s after our playback ends that an echo (delay + a room's reverb) may still be heard
F32 = 4  # bytes per output sample


class Playout:
    def __init__(self, echo: EchoGuard, clock: Callable[[], float] = time.perf_counter) -> None:
        self.echo, self.clock = echo, clock
        self.until = 0.0  # when the client will have played all it got
        self._sent: dict[int, int] = {}  # samples sent per turn (newest turns only)
        self._acked: dict[int, float] = {}  # played_ms per turn, from the client's acks
        self._started: dict[int, float] = {}  # when each turn's first audio began to play

    def on_sent(self, turn_id: int, pcm: bytes) -> None:
        """A chunk reached the client: it plays after what it already had."""
        start = max(self.until, self.clock())
        chunk = np.frombuffer(pcm, "<f4")
        self.echo.on_output(chunk, start)
        self.until = start + len(chunk) / OUT_RATE
        self._sent[turn_id] = self._sent.get(turn_id, 0) + len(chunk)
        self._started.setdefault(turn_id, start)
        while len(self._sent) > 4:
            self._started.pop(next(iter(self._sent)), None)
            self._sent.pop(next(iter(self._sent)))

    def started_at(self, turn_id: int) -> float | None:
        """When the turn's first audio began to play (None: none sent, or no longer tracked)."""
        return self._started.get(turn_id)

    def sent_samples(self, turn_id: int) -> int:
        return self._sent.get(turn_id, 0)

    def ack(self, turn_id: int, played_ms: float) -> None:
        """The client says how much of the turn it has played: the clock follows it."""
        if turn_id not in self._sent:
            return  # a turn we no longer track (or never sent): nothing to correct
        self._acked[turn_id] = played_ms
        remaining = self._sent[turn_id] / OUT_RATE - played_ms / 1000
        self.until = self.clock() + max(0.0, remaining)

    def playing(self) -> bool:
        return self.clock() < self.until

    def echo_possible(self) -> bool:
        """Our voice may still come back through the user's mic."""
        return self.clock() < self.until + ECHO_TAIL

    def stop(self, turn_id: int, echo_tail: bool = False) -> float:
        """The turn is cut: how much of it the client played (ms); the clock stops.
        `echo_tail`: our voice may still come back for ECHO_TAIL (a pause, judged by what follows)."""
        now = self.clock()
        unplayed = max(0.0, self.until - now)
        sent_ms = self._sent.get(turn_id, 0) / OUT_RATE * 1000
        played = self._acked.get(turn_id)
        self.until = min(self.until, now) if echo_tail else 0.0
        self.echo.cut(now)
        return played if played is not None else max(0.0, sent_ms - unplayed * 1000)

    def rewind(self, turn_id: int, played_samples: int) -> None:
        """A paused turn goes on: what is sent from here plays after the `played_samples` heard."""
        if turn_id in self._sent:
            self._sent[turn_id] = played_samples
        self._acked.pop(turn_id, None)
