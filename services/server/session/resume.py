"""Sessions that survive a dropped connection.

A mobile client loses its socket for a second; the conversation must not be lost. Each
/ws session's `call_ready` carries a resume token. When the socket drops (no close frame
from the client), the session is parked: its turns go on, their output waits in the
outbox. A client that reconnects within the window with the token, and the number of
frames it received, gets the same session: the frames it missed are sent again from the
`ReplayLog`, then what was queued meanwhile. A token is used once (a new one comes in the
new `call_ready`) and only by the credentials that opened the session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.server.session.session import Session

log = logging.getLogger("server.session")

REPLAY_BYTES = 2 * 1024 * 1024  # frames kept for a client that missed them (~15 s of JSON audio)
TOMBSTONES = 10_000  # expired tokens remembered, to say "expired" rather than "unknown"

Frame = str | bytes


class ReplayLog:
    """The newest frames sent to the client, numbered from 0 after `call_ready`."""

    def __init__(self, budget: int = REPLAY_BYTES) -> None:
        self.budget = budget
        self.count = 0  # frames sent so far
        self._frames: deque[Frame] = deque()
        self._bytes = 0

    def add(self, frame: Frame) -> None:
        self.count += 1
        self._frames.append(frame)
        self._bytes += len(frame)
        while self._bytes > self.budget and len(self._frames) > 1:
            self._bytes -= len(self._frames.popleft())

    def since(self, received: int) -> tuple[list[Frame], int]:
        """The frames after the first `received`, and how many of those are no longer kept."""
        first = self.count - len(self._frames)  # number of the oldest frame kept
        received = min(received, self.count)
        missing = max(0, first - received)
        return list(self._frames)[max(0, received - first):], missing


class ResumeRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Parked:
    session: Session
    key_id: str
    expiry: asyncio.TimerHandle | None = None  # set while no connection holds it


class Parking:
    """Resume tokens and the sessions they resume: held while connected, kept for `window`
    seconds after a drop, then closed by `on_expire` (which frees the session's place)."""

    def __init__(self, window: float, on_expire: Callable[[Session], Awaitable[None]]) -> None:
        self.window, self._on_expire = window, on_expire
        self._by_token: dict[str, Parked] = {}
        self._expired: OrderedDict[str, float] = OrderedDict()  # token -> when it expired

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def issue(self, session: Session, key_id: str) -> str:
        """A token for a session that just started (or resumed: the old token is gone)."""
        token = secrets.token_urlsafe(24)
        self._by_token[token] = Parked(session, key_id)
        return token

    def park(self, token: str) -> None:
        """The session's socket dropped: it waits `window` seconds for its client."""
        parked = self._by_token.get(token)
        if parked is None:
            return
        parked.expiry = asyncio.get_running_loop().call_later(self.window, lambda: asyncio.create_task(self._expire(token)))
        log.info("connection dropped: the session waits %.0f s for its client to resume", self.window)

    def claim(self, token: str, session_id: str, key_id: str) -> Session:
        """The session this token resumes, taken off the parking (a new token must be issued)."""
        parked = self._by_token.get(token)
        if parked is None:
            if token in self._expired:
                raise ResumeRefused(f"the resume window ({self.window:.0f} s) has passed; start a new session")
            raise ResumeRefused("unknown resume token (each token resumes once; the newest call_ready has the current one)")
        if parked.session.id != session_id:
            raise ResumeRefused("this resume token belongs to another session id")
        if parked.key_id != key_id:
            raise ResumeRefused("this resume token was issued to other credentials")
        if parked.session.closed:
            raise ResumeRefused("the session has ended; start a new session")
        del self._by_token[token]
        if parked.expiry is not None:
            parked.expiry.cancel()
        return parked.session

    def forget(self, token: str) -> None:
        """The session ended on purpose (the client closed it, a limit, a drain): no resume."""
        parked = self._by_token.pop(token, None)
        if parked is not None and parked.expiry is not None:
            parked.expiry.cancel()

    def parked(self) -> list[Session]:
        return [p.session for p in self._by_token.values() if p.expiry is not None]

    async def _expire(self, token: str) -> None:
        parked = self._by_token.pop(token, None)
        if parked is None:
            return
        self._expired[token] = time.time()
        while len(self._expired) > TOMBSTONES:
            self._expired.popitem(last=False)
        log.info("session %s: not resumed within %.0f s: it ends", parked.session.id, self.window)
        await self._on_expire(parked.session)
