"""The gateway's calls to the STT, chat and TTS services (no model code here).

Every call between services sends `service_headers()` (shared.security), the
service's own credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from services.server.gateway.errors import GatewayError
from shared.clients import TtsStream, UpstreamError
from shared.config import ServerSettings
from shared.security import service_headers
from shared.text_chunker import TextChunker

log = logging.getLogger("server.gateway")

MAX_UPLOAD = 25_000_000  # OpenAI's own limit for audio uploads (25 MB), as the STT service's
MAX_B64_AUDIO = MAX_UPLOAD * 4 // 3 + 4  # the same audio, base64 in a JSON body
TTS_MAX_CHARS = 2000  # what one TTS request may hold (shared.protocol.TtsRequest)


@lru_cache
def settings() -> ServerSettings:
    return ServerSettings()


def deps(request: Request) -> Any:
    return request.app.state.deps


def _base(request: Request, service: str, fallback: str) -> str:
    """One replica's base URL, through the session server's own client (it knows the replicas)."""
    client = getattr(deps(request).services, service, None)
    replicas = getattr(client, "replicas", None)
    url = replicas.pick().url if replicas is not None else fallback
    return str(url).split(",")[0].strip().rstrip("/")


def stt_base(request: Request) -> str:
    return _base(request, "stt", settings().stt_url)


def chat_base(request: Request) -> str:
    return _base(request, "chat", settings().chat_url)


def tts_ws_url() -> str:
    return settings().tts_url.split(",")[0].strip()


def tts_http_url() -> str:
    url = tts_ws_url().replace("ws://", "http://").replace("wss://", "https://")
    return url.split("/tts/")[0].rstrip("/")


# ---------------------------------------------------------------- bounded input


async def read_form(request: Request, limit: int = MAX_UPLOAD + 1_000_000) -> FormData:
    """The multipart form, rejected with 413 as soon as the body grows past `limit`
    (Content-Length first, then counted as it arrives, for chunked uploads)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise GatewayError(413, f"request body larger than {limit // 1_000_000} MB", code="file_too_large")
    received = 0
    receive = request.receive

    async def counted() -> Any:
        nonlocal received
        msg = await receive()
        if msg.get("type") == "http.request":
            received += len(msg.get("body", b""))
            if received > limit:
                raise GatewayError(413, f"request body larger than {limit // 1_000_000} MB", code="file_too_large")
        return msg

    try:
        return await Request(request.scope, counted).form(max_files=2, max_fields=30)
    except GatewayError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the client's error
        raise GatewayError(400, "the body is not a valid multipart form", code="invalid_form") from exc


async def read_upload(form: FormData, name: str = "file") -> tuple[bytes, str, str]:
    """(bytes, filename, content type) of the upload `name`, bounded to MAX_UPLOAD."""
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise GatewayError(400, f"send the audio as the multipart file field '{name}'", param=name, code="missing_file")
    data = await upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise GatewayError(413, "audio file larger than 25 MB", param=name, code="file_too_large")
    if not data:
        raise GatewayError(400, "the audio file is empty", param=name, code="empty_file")
    return data, upload.filename or "audio", upload.content_type or "application/octet-stream"


def decode_b64(data: str, param: str) -> bytes:
    if len(data) > MAX_B64_AUDIO:
        raise GatewayError(413, "base64 audio larger than 25 MB", param=param, code="file_too_large")
    if data.startswith("data:") and "," in data[:200]:
        data = data.split(",", 1)[1]  # data URIs (data:audio/wav;base64,...) are common in clients
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError(400, "audio data is not valid base64", param=param, code="invalid_base64") from exc
    if not raw:
        raise GatewayError(400, "audio data is empty", param=param, code="empty_file")
    return raw


# ---------------------------------------------------------------- STT


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    seconds: float = 0.0  # how long the STT call took


async def transcribe(
    request: Request, data: bytes, filename: str, content_type: str, *,
    language: str | None = None, prompt: str | None = None, temperature: float | None = None,
) -> Transcript:
    """Any format the STT service decodes; it also resamples, so the gateway does not."""
    form: dict[str, str] = {}
    if language:
        form["language"] = language
    if prompt:
        form["prompt"] = prompt
    if temperature is not None:
        form["temperature"] = str(temperature)
    t0 = time.perf_counter()
    try:
        r = await deps(request).http.post(stt_base(request) + "/transcribe", files={"file": (filename, data, content_type)},
                            data=form, headers=service_headers())
    except httpx.HTTPError as exc:
        raise UpstreamError("stt", f"unreachable ({type(exc).__name__})") from exc
    if r.status_code in (400, 415, 422):
        log.info("stt rejected an upload: %s", r.text[:300])
        raise GatewayError(400, "the audio could not be decoded: send WAV, FLAC, MP3, OGG/Opus, WebM or M4A", param="file",
                           code="invalid_audio")
    if r.status_code == 413:
        raise GatewayError(413, "audio file larger than 25 MB", param="file", code="file_too_large")
    if r.status_code != 200:
        raise UpstreamError("stt", f"{r.status_code}: {r.text[:300]}", retryable=r.status_code >= 500)
    body = r.json()
    text = str(body.get("text", "")).strip()
    duration = float(body.get("duration") or 0.0)
    segments = [Segment(int(s.get("id", i)), float(s.get("start", 0.0)), float(s.get("end", duration)), str(s.get("text", "")).strip())
                for i, s in enumerate(body.get("segments") or []) if isinstance(s, dict)]
    if not segments and text:  # an STT service without segments: the whole file is one
        segments = [Segment(0, 0.0, duration, text)]
    return Transcript(text, str(body.get("language") or language or "en"), duration, segments, time.perf_counter() - t0)


class _SttOptions(Protocol):
    language: str | None
    prompt: str | None
    temperature: float | None


Opts = TypeVar("Opts", bound=_SttOptions)


async def transcribe_upload(request: Request, options: type[Opts]) -> tuple[Transcript, Opts]:
    """A multipart upload (`file` plus form fields validated by `options`) transcribed:
    what every API family's speech-to-text route does before shaping its answer."""
    form = await read_form(request)
    data, filename, ctype = await read_upload(form, "file")
    opts = options.model_validate({k: v for k, v in form.multi_items() if isinstance(v, str)})  # type: ignore[attr-defined]
    tr = await transcribe(request, data, filename, ctype, language=opts.language, prompt=opts.prompt, temperature=opts.temperature)
    return tr, opts


# ---------------------------------------------------------------- chat


async def chat_stream(request: Request, messages: list[dict[str, str]], **options: Any) -> AsyncIterator[str]:
    """Text deltas of the reply (the session server's chat client, so the same auth and errors)."""
    opts = {k: v for k, v in options.items() if v is not None}
    async for delta in deps(request).services.chat.stream(messages, **opts):
        yield delta


async def chat_text(request: Request, messages: list[dict[str, str]], **options: Any) -> str:
    return "".join([d async for d in chat_stream(request, messages, **options)]).strip()


# ---------------------------------------------------------------- TTS voices

_catalog: tuple[float, list[dict[str, Any]] | None] = (0.0, None)


async def voice_catalog(http: httpx.AsyncClient) -> list[dict[str, Any]] | None:
    """GET tts/voices, cached 30 s; None when the TTS service has no catalog."""
    global _catalog
    if time.monotonic() - _catalog[0] < 30 and _catalog[1] is not None:
        return _catalog[1]
    try:
        r = await http.get(tts_http_url() + "/voices", headers=service_headers(), timeout=5.0)
        voices = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        voices = None
    if isinstance(voices, dict):
        voices = voices.get("voices") or voices.get("data")
    voices = [v for v in voices if isinstance(v, dict) and v.get("id")] if isinstance(voices, list) else None
    _catalog = (time.monotonic(), voices)
    return voices


def _voice_ids(voices: list[dict[str, Any]] | None) -> set[str]:
    ids = {"default"} | set(settings().openai_voice_map.values())
    for v in voices or []:
        ids.add(str(v["id"]))
        ids.update(str(a) for a in v.get("aliases") or [])
    return ids


async def resolve_voice(http: httpx.AsyncClient, name: str | None, param: str = "voice") -> str | None:
    """An OpenAI voice name (through the configured map) or a catalog id, else 400. Never a path."""
    if not name:
        return None
    mapped = settings().openai_voice_map.get(name.lower())
    if mapped:
        return mapped
    ids = _voice_ids(await voice_catalog(http))
    if name in ids:
        return name
    choices = sorted(ids | set(settings().openai_voice_map))
    raise GatewayError(400, f"unknown voice {name[:60]!r}; choose one of: {', '.join(choices)}", param=param, code="invalid_voice")


# ---------------------------------------------------------------- TTS synthesis


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


async def aiter_list(items: Iterable[str]) -> AsyncIterator[str]:
    for x in items:
        yield x


_CHECK = object()


async def speak(pieces: AsyncIterator[str], voice: str | None) -> AsyncIterator[str | np.ndarray]:
    """Speak text pieces as they come (a chat stream, or a split text) over one TTS stream.

    Yields each piece (str) when it is sent to TTS and the audio (24 kHz float32) as it
    arrives, so callers can interleave transcript and audio. Leaving the loop closes
    the TTS connection, which cancels the synthesis."""
    tts = await TtsStream.connect(tts_ws_url())
    q: asyncio.Queue[Any] = asyncio.Queue(maxsize=512)
    count = {"sent": 0, "ended": 0, "done": 0}

    async def feed() -> None:
        async for text in pieces:
            for part in split_text(text) if len(text) > TTS_MAX_CHARS else [text]:
                await tts.speak(part, voice, str(count["sent"]))
                count["sent"] += 1
                await q.put(part)
        count["done"] = 1
        await q.put(_CHECK)

    async def listen() -> None:
        async for ev in tts.events():
            if isinstance(ev, np.ndarray):
                await q.put(ev)
            elif ev.get("type") == "end":
                count["ended"] += 1
                await q.put(_CHECK)
            elif ev.get("type") == "error":
                raise UpstreamError("tts", str(ev.get("message", ""))[:300], retryable=False)
        raise UpstreamError("tts", "connection closed before the audio ended")

    async def guard(coro: Any) -> None:
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await q.put(exc)

    tasks = [asyncio.create_task(guard(feed())), asyncio.create_task(guard(listen()))]
    try:
        while True:
            item = await q.get()
            if isinstance(item, Exception):
                raise item
            if item is _CHECK:
                if count["done"] and count["ended"] >= count["sent"]:
                    return
                continue
            yield item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(Exception):
            await tts.close()


async def speak_audio(text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
    """Only the audio of a fixed text, streamed as it is synthesized."""
    async for item in speak(aiter_list(split_text(text)), voice):
        if isinstance(item, np.ndarray):
            yield item


async def synthesize(text: str, voice: str | None) -> np.ndarray:
    chunks = [c async for c in speak_audio(text, voice)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
