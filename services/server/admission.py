"""Which sessions the server admits, and how they end when it drains.

A small registry: open sessions per server and per API key are capped, and on
SIGTERM every session is let finish the turn it is in, then told and closed.

A newcomer beyond the server's cap waits in a bounded queue (first come, first
served), told its place and an estimated wait whenever its place changes; past the
queue's length or its timeout, or over its key's cap, it is refused with the reason.
The estimate assumes slots free at the rate sessions have been ending: place x mean
session length / sessions per server (a first guess of 60 s until one has ended).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from shared.metrics import ACTIVE_SESSIONS, QUEUED_SESSIONS, REJECTED

if TYPE_CHECKING:
    from services.server.session import Session

log = logging.getLogger("server.admission")


class Full(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message, self.reason = message, reason


@dataclass(eq=False)
class _Ticket:
    session: Session
    key_id: str
    admitted: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # admitted, or its place moved


Tell = Callable[[int, float], Awaitable[None]]  # (place in the queue from 1, estimated wait in s)
_FIRST_GUESS = 60.0  # s, the mean session length assumed until one has ended


class Admission:
    def __init__(self, max_sessions: int, max_per_key: int, max_queued: int = 0, queue_timeout: float = 30.0) -> None:
        self.max_sessions, self.max_per_key = max_sessions, max_per_key or max_sessions
        self.max_queued, self.queue_timeout = max_queued, queue_timeout
        self.sessions: dict[Session, str] = {}  # session -> key id
        self._since: dict[Session, float] = {}  # session -> when admitted
        self._per_key: Counter[str] = Counter()
        self._queue: list[_Ticket] = []
        self._mean_length: float | None = None  # s, moving mean of ended sessions' lengths
        self.draining = False

    def admit(self, session: Session, key_id: str) -> bool:
        """Register the session now (True), or say it may wait in the queue for a place (False);
        raise Full with the reason when it can do neither."""
        reason = None
        if self.draining:
            reason = "draining", "the server is shutting down; connect again in a moment"
        elif len(self.sessions) >= self.max_sessions or self._queue:  # those waiting go first
            if len(self._queue) < self.max_queued:
                return False  # (a place that frees goes to it once its key is under its cap too)
            reason = "server_full", f"the server is serving its maximum of {self.max_sessions} sessions; try again later"
        elif self._per_key[key_id] >= self.max_per_key:
            reason = "key_full", f"this API key already has {self.max_per_key} open sessions; close one or try again later"
        if reason is not None:
            self._refused(Full(reason[1], reason[0]))
        self._register(session, key_id)
        return True

    async def wait(self, session: Session, key_id: str, tell: Tell) -> None:
        """Wait in the queue until the session is admitted; `tell` is called with its place and
        estimated wait whenever the place changes. Raise Full past the timeout or when draining."""
        ticket = _Ticket(session, key_id)
        self._queue.append(ticket)
        QUEUED_SESSIONS.set(len(self._queue))
        deadline, told = time.monotonic() + self.queue_timeout, 0
        try:
            while not ticket.admitted:
                if self.draining:
                    self._refused(Full("the server is shutting down; connect again in a moment", "draining"))
                left = deadline - time.monotonic()
                if left <= 0:
                    self._refused(Full(f"no place came free within {self.queue_timeout:.0f}s; try again later", "server_full"))
                ticket.changed.clear()
                if (place := self._queue.index(ticket) + 1) != told:
                    await tell(place, self.estimated_wait(place))
                    told = place
                try:
                    await asyncio.wait_for(ticket.changed.wait(), left)
                except TimeoutError:
                    pass
        finally:
            if ticket in self._queue:
                self._queue.remove(ticket)
                QUEUED_SESSIONS.set(len(self._queue))
                self._moved()

    def estimated_wait(self, place: int) -> float:
        return round(place * (self._mean_length or _FIRST_GUESS) / self.max_sessions, 1)

    def release(self, session: Session) -> None:
        key = self.sessions.pop(session, None)
        if key is not None:
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]
            length = time.monotonic() - self._since.pop(session)
            self._mean_length = length if self._mean_length is None else 0.8 * self._mean_length + 0.2 * length
        ACTIVE_SESSIONS.set(len(self.sessions))
        self._grant()

    def _register(self, session: Session, key_id: str) -> None:
        self.sessions[session] = key_id
        self._since[session] = time.monotonic()
        self._per_key[key_id] += 1
        ACTIVE_SESSIONS.set(len(self.sessions))

    def _refused(self, exc: Full) -> NoReturn:
        REJECTED.labels(service="server", reason=exc.reason).inc()
        raise exc

    def _grant(self) -> None:
        """Places that came free go to the queue's first tickets whose key is under its cap."""
        for ticket in list(self._queue):
            if len(self.sessions) >= self.max_sessions or self.draining:
                break
            if self._per_key[ticket.key_id] < self.max_per_key:
                self._queue.remove(ticket)
                self._register(ticket.session, ticket.key_id)
                ticket.admitted = True
                ticket.changed.set()
        QUEUED_SESSIONS.set(len(self._queue))
        self._moved()

    def _moved(self) -> None:
        for ticket in self._queue:
            ticket.changed.set()

    async def drain(self, timeout: float) -> None:
        """Refuse newcomers; let turns in flight finish (at most `timeout` s); then say goodbye."""
        self.draining = True
        self._moved()  # those waiting are told at once
        t0 = time.monotonic()
        while any(s.busy() for s in self.sessions) and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.05)
        busy = sum(s.busy() for s in self.sessions)
        log.info("drain: %d sessions, %d still busy after %.1fs; closing them", len(self.sessions), busy, time.monotonic() - t0)
        await asyncio.gather(*(s.shutdown() for s in list(self.sessions)), return_exceptions=True)
