"""Which sessions the server admits, and how they end when it drains.

A small registry: open sessions per server and per API key are capped (a newcomer
beyond the cap is told why and to come back later), and on SIGTERM every session is
let finish the turn it is in, then told and closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from shared.metrics import ACTIVE_SESSIONS, REJECTED

if TYPE_CHECKING:
    from services.server.session import Session

log = logging.getLogger("server.admission")


class Full(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message, self.reason = message, reason


class Admission:
    def __init__(self, max_sessions: int, max_per_key: int) -> None:
        self.max_sessions, self.max_per_key = max_sessions, max_per_key or max_sessions
        self.sessions: dict[Session, str] = {}  # session -> key id
        self._per_key: Counter[str] = Counter()
        self.draining = False

    def admit(self, session: Session, key_id: str) -> None:
        """Register the session, or raise Full with the reason it cannot be served now."""
        reason = None
        if self.draining:
            reason = "draining", "the server is shutting down; connect again in a moment"
        elif len(self.sessions) >= self.max_sessions:
            reason = "server_full", f"the server is serving its maximum of {self.max_sessions} sessions; try again later"
        elif self._per_key[key_id] >= self.max_per_key:
            reason = "key_full", f"this API key already has {self.max_per_key} open sessions; close one or try again later"
        if reason is not None:
            REJECTED.labels(service="server", reason=reason[0]).inc()
            raise Full(reason[1], reason[0])
        self.sessions[session] = key_id
        self._per_key[key_id] += 1
        ACTIVE_SESSIONS.set(len(self.sessions))

    def release(self, session: Session) -> None:
        key = self.sessions.pop(session, None)
        if key is not None:
            self._per_key[key] -= 1
            if self._per_key[key] <= 0:
                del self._per_key[key]
        ACTIVE_SESSIONS.set(len(self.sessions))

    async def drain(self, timeout: float) -> None:
        """Refuse newcomers; let turns in flight finish (at most `timeout` s); then say goodbye."""
        self.draining = True
        t0 = time.monotonic()
        while any(s.busy() for s in self.sessions) and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.05)
        busy = sum(s.busy() for s in self.sessions)
        log.info("drain: %d sessions, %d still busy after %.1fs; closing them", len(self.sessions), busy, time.monotonic() - t0)
        await asyncio.gather(*(s.shutdown() for s in list(self.sessions)), return_exceptions=True)
