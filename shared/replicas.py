"""Several replicas of one stage: each request goes to the least-loaded healthy one.

Load is what this client has in flight on a replica plus what the replica last reported
(`GET /load`: its in-flight work and queue depth, polled in the background). A replica
that fails to answer is taken out for a while and the request is retried on another;
the poll brings it back once `/ready` answers again.

The one retry policy of the session server is here too (`on_replicas`): a retryable
failure takes the replica out and tries the next one at once; once every replica was
tried, tenacity backs off (exponential, with jitter) and another pass begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger("replicas")
T = TypeVar("T")

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
        return as_http(self.url).split("/tts/")[0].rstrip("/")


def as_http(url: str) -> str:
    """ws://... -> http://..., wss://... -> https://... (anything else unchanged): the one rewrite."""
    return url.replace("ws://", "http://", 1).replace("wss://", "https://", 1) if url.startswith(("ws://", "wss://")) else url


def as_ws(url: str) -> str:
    """http://... -> ws://..., https://... -> wss://... (anything else unchanged)."""
    return url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) if url.startswith(("http://", "https://")) else url


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

    @contextlib.contextmanager
    def holding(self, replica: Replica) -> Iterator[Replica]:
        """Counts as load on `replica` while a stream opened on it is read (it was `served` once)."""
        replica.in_flight += 1
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


# ---------------------------------------------------------------- the retry policy


class ReplicaError(Exception):
    """A failed call to a replica. `retryable`: another try (here or on another replica) may
    succeed. shared.clients.UpstreamError is the one kind raised, and decides the flag."""

    retryable: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    """How one call is retried: `passes` over the replicas (each tried at most once a pass,
    a failed one skipped at once), with exponential backoff and jitter between passes."""

    passes: int = 3  # the first, then two after a backoff (one replica: three tries, as before)
    backoff: float = 0.15  # seconds before the second pass; doubled for each later one
    max_backoff: float = 2.0
    jitter: float = 0.05
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests pass a fake clock


RETRY = RetryPolicy()


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ReplicaError) and exc.retryable


def _before_sleep(pool: Replicas) -> Callable[[RetryCallState], None]:
    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info("%s: every replica failed (%s); retrying in %.2fs", pool.service, exc, wait)

    return note


async def on_replicas(pool: Replicas, call: Callable[[Replica], Awaitable[T]], policy: RetryPolicy = RETRY) -> T:
    """Run `call` on the least-loaded healthy replica. A retryable ReplicaError marks that
    replica failed and tries another at once; when every replica failed in this pass, it
    backs off and starts another pass. Anything else, and the last failure, is raised."""

    async def one_pass() -> T:
        tried: set[str] = set()
        while True:
            replica = pool.pick(tried)
            try:
                with pool.using(replica):
                    return await call(replica)
            except ReplicaError as exc:
                if not exc.retryable:
                    raise
                pool.failed(replica)
                tried.add(replica.url)
                if len(tried) >= len(pool.replicas):
                    raise
                log.info("%s; trying another replica", exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(policy.passes, 1)),
        wait=wait_exponential_jitter(multiplier=policy.backoff, max=policy.max_backoff, jitter=policy.jitter),
        retry=retry_if_exception(_retryable), reraise=True, sleep=policy.sleep, before_sleep=_before_sleep(pool),
    )
    return await retrying(one_pass)


async def streamed(pool: Replicas, open_stream: Callable[[Replica], AsyncGenerator[T]],
                   policy: RetryPolicy = RETRY) -> AsyncIterator[T]:
    """The items of a stream opened on a replica. A failure before the first item is
    retried (on_replicas); one after it is the caller's: what was streamed cannot be unsaid."""

    async def first(replica: Replica) -> tuple[Replica, AsyncGenerator[T], list[T]]:
        stream = open_stream(replica)
        try:
            head = [await anext(stream)]
        except StopAsyncIteration:
            head = []
        except BaseException:
            await stream.aclose()
            raise
        return replica, stream, head

    replica, stream, head = await on_replicas(pool, first, policy)
    with pool.holding(replica):
        try:
            for item in head:
                yield item
            async for item in stream:
                yield item
        finally:
            await stream.aclose()
