"""Network clients the session server uses for the three services.

Errors are translated here, at the boundary, into `UpstreamError` with a
`retryable` flag and the service's name, so the session can tell the user what failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import numpy as np
import websockets

from shared.audio import f32le_to_float, float_to_pcm16
from shared.replicas import Replica, Replicas
from shared.security import service_headers
from shared.service import ServiceError
from shared.sse import iter_sse_deltas

log = logging.getLogger("clients")
T = TypeVar("T")


class UpstreamError(Exception):
    """A failed call to one of our services. `message` is for the user (short, no upstream
    text); `detail` is for the log; `retryable` says whether trying again may succeed."""

    def __init__(self, service: str, message: str, retryable: bool = True, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{service}: {message}" + (f" ({detail})" if detail else ""))
        self.service, self.message, self.retryable, self.detail = service, message, retryable, detail
        self.status = status  # the service's HTTP status, when it answered at all

    @property
    def bad_request(self) -> bool:
        """Our service refused the request itself (too long, invalid options): the caller's fault."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


PUBLIC = {"stt": "speech recognition", "chat": "the language model", "tts": "speech synthesis"}
RETRIES = 2  # attempts after the first, for retryable failures before any output
BACKOFF = 0.15  # seconds, doubled after each attempt


def _unreachable(service: str, exc: BaseException) -> UpstreamError:
    return UpstreamError(service, f"{PUBLIC[service]} is unavailable right now", True, type(exc).__name__)


def _refused(service: str, r: httpx.Response) -> UpstreamError:
    retryable = r.status_code >= 500 or r.status_code == 429
    what = "is busy or restarting" if retryable else "refused the request"
    return UpstreamError(service, f"{PUBLIC[service]} {what}", retryable, _detail(r), r.status_code)


async def on_replicas(pool: Replicas, call: Callable[[Replica], Awaitable[T]]) -> T:
    """Run `call` on the least-loaded healthy replica; a retryable failure takes that
    replica out and tries another at once, or the same ones again after a bounded backoff."""
    tried: set[str] = set()
    delay = BACKOFF
    for attempt in range(RETRIES + 1):
        replica = pool.pick(tried)
        try:
            with pool.using(replica):
                return await call(replica)
        except UpstreamError as exc:
            if not exc.retryable or attempt == RETRIES:
                raise
            pool.failed(replica)
            tried.add(replica.url)
            if len(tried) >= len(pool.replicas):  # every replica failed once: wait, then again
                tried.clear()
                log.info("%s; retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.info("%s; retrying on another replica", exc)
    raise AssertionError("unreachable")


class SttClient:
    def __init__(self, http: httpx.AsyncClient, target: str | Replicas) -> None:
        self.http, self.replicas = http, Replicas.of("stt", target)

    @property
    def url(self) -> str:
        return self.replicas.pick().url.rstrip("/") + "/transcribe"

    async def transcribe(self, audio: np.ndarray) -> str:
        """16 kHz float32 in; sent as raw int16 PCM (no container to decode)."""
        pcm = float_to_pcm16(audio).tobytes()

        async def once(replica: Replica) -> str:
            files = {"audio_file": ("utterance.pcm", pcm, "audio/l16")}
            try:
                r = await self.http.post(replica.url.rstrip("/") + "/transcribe", files=files)
            except httpx.HTTPError as exc:
                raise _unreachable("stt", exc) from exc
            if r.status_code != 200:
                raise _refused("stt", r)
            return str(r.json()["text"]).strip()

        return await on_replicas(self.replicas, once)

    async def end_of_turn(self, audio: np.ndarray) -> float | None:
        """Smart Turn's P(the speech sounds finished) for the last 8 s; None if the model is not there."""
        pcm = float_to_pcm16(audio[-8 * 16000 :]).tobytes()

        async def once(replica: Replica) -> float | None:
            try:
                r = await self.http.post(replica.url.rstrip("/") + "/end-of-turn", content=pcm,
                                         headers={"content-type": "audio/l16"}, timeout=3.0)
            except httpx.HTTPError as exc:
                raise _unreachable("stt", exc) from exc
            if r.status_code == 503 and not r.json().get("retryable", True):
                return None  # not installed
            if r.status_code != 200:
                raise _refused("stt", r)
            return float(r.json()["probability"])

        return await on_replicas(self.replicas, once)


class ChatClient:
    def __init__(self, http: httpx.AsyncClient, target: str | Replicas) -> None:
        self.http, self.replicas = http, Replicas.of("chat", target)

    @property
    def url(self) -> str:
        return self.replicas.pick().url.rstrip("/") + "/v1/chat/completions"

    async def stream(
        self, messages: list[dict[str, str]], on_end_of_turn: Callable[[float], None] | None = None, **options: Any
    ) -> AsyncIterator[str]:
        """Text deltas over server-sent events; leaving the loop closes the request,
        which stops generation on the chat service. With `on_end_of_turn`, asks the chat
        service how finished the user's last message reads (if its engine can tell).
        A failure before the first delta is retried; after it, it is the caller's."""
        body = {"messages": messages, "stream": True, "end_of_turn": on_end_of_turn is not None, **options}
        tried: set[str] = set()
        for attempt in range(RETRIES + 1):
            started = False
            replica = self.replicas.pick(tried)
            try:
                with self.replicas.using(replica):
                    async with self.http.stream("POST", replica.url.rstrip("/") + "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            await r.aread()
                            raise _refused("chat", r)
                        async for delta in iter_sse_deltas(r.aiter_lines(), on_end_of_turn):
                            started = True
                            yield delta
                return
            except httpx.HTTPError as exc:
                err = _unreachable("chat", exc)
            except ServiceError as exc:  # an error event inside the stream
                err = UpstreamError("chat", f"{PUBLIC['chat']} failed", exc.retryable, exc.message)
            except UpstreamError as exc:
                err = exc
            if started or not err.retryable or attempt == RETRIES:
                raise err
            self.replicas.failed(replica)
            tried.add(replica.url)
            log.info("%s; retrying", err)
            if len(tried) >= len(self.replicas.replicas):
                tried.clear()
                await asyncio.sleep(BACKOFF * 2**attempt)


class TtsStream:
    """One WebSocket to the TTS service (one per turn: closing it is the cancel)."""

    def __init__(self, ws: websockets.ClientConnection, replica: Replica | None = None, pool: Replicas | None = None) -> None:
        self.ws, self.replica, self.pool = ws, replica, pool
        if replica is not None:
            replica.in_flight += 1  # held for the connection's life: a turn's speech is one stream

    @classmethod
    async def connect(cls, target: str | Replicas) -> TtsStream:
        pool = Replicas.of("tts", target)

        async def once(replica: Replica) -> TtsStream:
            try:
                ws = await websockets.connect(replica.url, max_size=2**24, open_timeout=5, additional_headers=service_headers())
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                raise _unreachable("tts", exc) from exc
            return cls(ws, replica, pool)

        return await on_replicas(pool, once)

    async def speak(self, text: str, voice: str | None, ident: str) -> None:
        msg = {"type": "speak", "text": text, "id": ident}
        if voice:
            msg["voice"] = voice
        try:
            await self.ws.send(json.dumps(msg))
        except websockets.WebSocketException as exc:
            raise UpstreamError("tts", f"{PUBLIC['tts']} was interrupted", True, "connection lost") from exc

    async def events(self, idle_timeout: float = 20.0) -> AsyncIterator[np.ndarray | dict[str, Any]]:
        """Audio frames (24 kHz float32) and control messages ({"type":"end"|"error",...})."""
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.recv(), idle_timeout)
            except websockets.ConnectionClosedOK:
                return
            except TimeoutError as exc:
                raise UpstreamError("tts", f"{PUBLIC['tts']} did not answer", True, f"no answer for {idle_timeout:.0f}s") from exc
            except websockets.WebSocketException as exc:
                raise UpstreamError("tts", f"{PUBLIC['tts']} was interrupted", True, "connection lost") from exc
            yield f32le_to_float(msg) if isinstance(msg, bytes) else json.loads(msg)

    async def close(self) -> None:
        if self.replica is not None:
            self.replica.in_flight -= 1
            self.replica = None
        await self.ws.close()


def _detail(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json().get('error', r.text)[:200]}"
    except ValueError:
        return f"{r.status_code}: {r.text[:200]}"
