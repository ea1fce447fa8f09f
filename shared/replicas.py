"""Several replicas of one stage: each request goes to the least-loaded healthy one.

Load is what this client has in flight on a replica plus what the replica last reported
(`GET /load`: its in-flight work and queue depth, polled in the background). A replica
that fails to answer is taken out for a while and the request is retried on another;
the poll brings it back once `/ready` answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

log = logging.getLogger("replicas")

DOWN_FOR = 3.0  # seconds a failed replica is skipped before it is tried again
POLL_EVERY = 1.0


@dataclass
class Replica:
    url: str
    in_flight: int = 0  # requests this client has open on it
    reported: float = 0.0  # in-flight + queued work the replica itself last reported
    down_until: float = 0.0
    served: int = 0

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until

    @property
    def http_base(self) -> str:
        """The replica's HTTP address (a ws:// stream URL becomes its service's base)."""
        base = self.url.replace("ws://", "http://").replace("wss://", "https://")
        return base.split("/tts/")[0].rstrip("/")


class Replicas:
    def __init__(self, service: str, urls: list[str]) -> None:
        if not urls:
            raise ValueError(f"{service}: no replica URLs")
        self.service = service
        self.replicas = [Replica(u.strip()) for u in urls if u.strip()]
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, service: str, target: str | Replicas) -> Replicas:
        return target if isinstance(target, Replicas) else cls(service, [target])

    def pick(self, exclude: set[str] | frozenset[str] = frozenset()) -> Replica:
        """The least-loaded healthy replica not in `exclude` (if all are down: the one back soonest)."""
        candidates = [r for r in self.replicas if r.url not in exclude] or self.replicas
        healthy = [r for r in candidates if r.healthy]
        if not healthy:
            return min(candidates, key=lambda r: r.down_until)
        return min(healthy, key=lambda r: (r.in_flight + r.reported, r.served))

    @contextlib.contextmanager
    def using(self, replica: Replica) -> Iterator[Replica]:
        replica.in_flight += 1
        replica.served += 1
        try:
            yield replica
        finally:
            replica.in_flight -= 1

    def failed(self, replica: Replica) -> None:
        if len(self.replicas) > 1:
            log.warning("%s replica %s failed: taken out for %.0fs", self.service, replica.url, DOWN_FOR)
        replica.down_until = time.monotonic() + DOWN_FOR

    def start_polling(self, http: httpx.AsyncClient) -> None:
        """Background health and load reports; only worth it with more than one replica."""
        if len(self.replicas) > 1 and self._poller is None:
            self._poller = asyncio.create_task(self._poll(http))

    async def _poll(self, http: httpx.AsyncClient) -> None:
        while True:
            await asyncio.gather(*(self._poll_one(http, r) for r in self.replicas))
            await asyncio.sleep(POLL_EVERY)

    async def _poll_one(self, http: httpx.AsyncClient, r: Replica) -> None:
        try:
            ready = await http.get(r.http_base + "/ready", timeout=1.0)
            if ready.status_code != 200:
                r.down_until = time.monotonic() + POLL_EVERY * 1.5
                return
            if r.down_until and not r.healthy:
                log.info("%s replica %s is back", self.service, r.url)
            r.down_until = 0.0
            load = await http.get(r.http_base + "/load", timeout=1.0)
            if load.status_code == 200:
                body = load.json()
                r.reported = float(body.get("in_flight", 0)) + float(body.get("queued", 0))
        except (httpx.HTTPError, ValueError):
            r.down_until = time.monotonic() + POLL_EVERY * 1.5

    def status(self) -> list[dict[str, object]]:
        return [{"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "reported": r.reported, "served": r.served}
                for r in self.replicas]
