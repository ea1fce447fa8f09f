"""The one way the session server reaches STT, chat and TTS: `Upstreams`, built once at
start-up (app.py's `_load`) and shared by the sessions and every gateway route.

It holds the settings, the HTTP client, the service clients over their replica pools,
the voice catalog, and `speak()`, the gateway's speech of a text (over shared.clients.Speech,
which the session's turns use too). Retries and fail-over are the clients' (one policy,
shared.replicas.on_replicas); nothing here posts by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from shared.audio import f32le_to_float
from shared.clients import ChatClient, Speech, SpeechAudio, SpeechEnd, SttClient, UpstreamError
from shared.config import ServerSettings, urls
from shared.replicas import Replica, Replicas, RetryPolicy, on_replicas
from shared.security import service_headers
from shared.text_chunker import TextChunker

log = logging.getLogger("server.upstreams")

TTS_MAX_CHARS = 2000  # what one TTS request may hold (shared.protocol.TtsRequest)
CATALOG_TTL = 30.0  # s the voice catalog is kept
ONCE_EACH = RetryPolicy(passes=1)  # every replica tried once, no backoff: for look-ups a caller can do without


class VoiceCatalog:
    """The TTS service's voices (GET /voices on a replica), cached CATALOG_TTL seconds."""

    def __init__(self, http: httpx.AsyncClient, pool: Replicas) -> None:
        self.http, self.pool = http, pool
        self._at, self._voices = 0.0, list[dict[str, Any]]()

    async def get(self) -> list[dict[str, Any]]:
        """The catalog; UpstreamError when no replica can list it (that is not cached)."""
        if time.monotonic() - self._at < CATALOG_TTL:
            return self._voices

        async def once(replica: Replica) -> Any:
            try:
                r = await self.http.get(replica.http_base + "/voices", timeout=5.0)
            except httpx.HTTPError as exc:
                raise UpstreamError.unreachable("tts", exc) from exc
            if r.status_code != 200:
                raise UpstreamError.of_response("tts", r)
            try:
                return r.json()
            except ValueError as exc:
                raise UpstreamError("tts", "speech synthesis sent an unreadable voice list", False, "not JSON") from exc

        voices = await on_replicas(self.pool, once, ONCE_EACH)
        if isinstance(voices, dict):  # {"voices": [...]} or {"data": [...]} from other TTS servers
            voices = voices.get("voices") or voices.get("data")
        self._voices = [v for v in voices if isinstance(v, dict) and v.get("id")] if isinstance(voices, list) else []
        self._at = time.monotonic()
        return self._voices

    async def ids(self) -> set[str] | None:
        """Every voice id and alias; None when the catalog cannot be had right now."""
        try:
            voices = await self.get()
        except UpstreamError as exc:
            log.info("voice catalog unavailable: %s", exc)
            return None
        out: set[str] = set()
        for v in voices:
            out.add(str(v["id"]))
            out.update(str(a) for a in v.get("aliases") or [])
        return out

    async def known(self, voice: str) -> bool:
        """Is `voice` in the catalog? (If the catalog cannot say, the speech will: True.)"""
        ids = await self.ids()
        return ids is None or voice in ids


@dataclass
class Upstreams:
    """STT, chat and TTS as the sessions and the gateway reach them. `stt`, `chat`, `tts`
    and `cfg` are what a session reads (the fields of session.Services)."""

    cfg: ServerSettings
    http: httpx.AsyncClient
    stt: SttClient
    chat: ChatClient
    tts: Replicas  # the TTS pool (stream URLs); Speech and TtsStream connect to it
    voices: VoiceCatalog = field(init=False)

    def __post_init__(self) -> None:
        self.voices = VoiceCatalog(self.http, self.tts)

    @classmethod
    def build(cls, cfg: ServerSettings) -> Upstreams:
        """The HTTP client and a pool per stage from `cfg`; pools of several replicas are
        polled for health and load (call inside the running loop)."""
        http = httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout, connect=3.0),
                                 limits=httpx.Limits(max_keepalive_connections=32), headers=service_headers())
        stt, chat, tts = (Replicas(name, urls(many, one)) for name, many, one in
                          (("stt", cfg.stt_urls, cfg.stt_url), ("chat", cfg.chat_urls, cfg.chat_url), ("tts", cfg.tts_urls, cfg.tts_url)))
        for pool in (stt, chat, tts):
            pool.start_polling(http)
        return cls(cfg, http, SttClient(http, stt), ChatClient(http, chat), tts)

    def pools(self) -> dict[str, Replicas]:
        return {"stt": self.stt.replicas, "chat": self.chat.replicas, "tts": self.tts}

    # ------------------------------------------------------------ TTS over HTTP

    async def tts_post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to a TTS replica's HTTP API (e.g. /v1/voices); a non-2xx answer is an
        UpstreamError with the service's status. Tried once on each replica: not idempotent."""
        async def once(replica: Replica) -> httpx.Response:
            try:
                r = await self.http.post(replica.http_base + path, **kwargs)
            except httpx.HTTPError as exc:
                raise UpstreamError.unreachable("tts", exc) from exc
            if not 200 <= r.status_code < 300:
                raise UpstreamError.of_response("tts", r)
            return r

        return await on_replicas(self.tts, once, ONCE_EACH)

    # ------------------------------------------------------------ speech

    async def open_speech(self, voice: str | None) -> Speech:
        """One answer's speech on the least-loaded TTS replica (a session's turn speaks over it)."""
        return await Speech.open(self.tts, voice)

    async def speak(self, text: str | AsyncIterable[str], voice: str | None) -> AsyncIterator[str | np.ndarray]:
        """Speak a whole text (cut by the text chunker) or pieces as they come (a chat reply)
        over one Speech. Yields each piece (str) as it is queued and its audio (24 kHz
        float32) as it arrives, so callers can interleave transcript and audio. A lost TTS
        replica is replaced mid-text (Speech); leaving the loop cancels the synthesis."""
        pieces = _aiter(split_text(text)) if isinstance(text, str) else text
        speech = await Speech.open(self.tts, voice)
        out: asyncio.Queue[str | np.ndarray | SpeechEnd | BaseException | None] = asyncio.Queue(maxsize=512)
        said, fed = 0, False

        async def feed() -> None:
            nonlocal said, fed
            async for piece in pieces:
                for part in split_text(piece) if len(piece) > TTS_MAX_CHARS else [piece]:
                    said += 1
                    await out.put(part)
                    await speech.say(part)
            fed = True
            await out.put(None)  # wakes the reader: all said may already have ended

        async def listen() -> None:
            async for ev in speech.events():
                await out.put(f32le_to_float(ev.pcm) if isinstance(ev, SpeechAudio) else ev)

        async def guard(work: Any) -> None:
            try:
                await work
            except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
                await out.put(exc)

        tasks = [asyncio.create_task(guard(feed())), asyncio.create_task(guard(listen()))]
        ended = 0
        try:
            while not (fed and ended >= said):
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, SpeechEnd):
                    ended += 1
                    if item.error:
                        raise UpstreamError("tts", "speech synthesis failed on this text", False, item.error)
                elif item is not None:
                    yield item
        finally:
            await speech.close()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def speak_audio(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        """Only the audio of a text, streamed as it is synthesized."""
        async for item in self.speak(text, voice):
            if isinstance(item, np.ndarray):
                yield item

    async def synthesize(self, text: str, voice: str | None) -> np.ndarray:
        chunks = [c async for c in self.speak_audio(text, voice)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def split_text(text: str) -> list[str]:
    """Pieces worth speaking: the first clause early (first audio sooner), then sentences,
    none longer than one TTS request may be."""
    chunker = TextChunker()
    pieces = [*chunker.push(text.strip() + " "), *chunker.flush()]
    out: list[str] = []
    for p in pieces:
        while len(p) > TTS_MAX_CHARS:
            cut = p.rfind(" ", 0, TTS_MAX_CHARS)
            cut = cut if cut > 0 else TTS_MAX_CHARS
            out.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            out.append(p)
    return out


async def _aiter(items: Iterable[str]) -> AsyncIterator[str]:
    for x in items:
        yield x
