"""What the gateway's API families share: the `Upstreams` dependency (the one way to
reach STT, chat and TTS: services/server/upstreams.py), bounded reading of uploads, and
the transcript, chat and voice helpers every family shapes its answers from."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request
from starlette.datastructures import FormData, UploadFile
from starlette.requests import HTTPConnection

from services.server.gateway.errors import GatewayError
from services.server.upstreams import Upstreams
from shared.clients import UpstreamError

log = logging.getLogger("server.gateway")

MAX_UPLOAD = 25_000_000  # OpenAI's own limit for audio uploads (25 MB), as the STT service's
MAX_B64_AUDIO = MAX_UPLOAD * 4 // 3 + 4  # the same audio, base64 in a JSON body


def upstreams(conn: HTTPConnection) -> Upstreams:
    """The app's Upstreams (built at start-up), for HTTP routes and WebSockets alike."""
    ups = getattr(conn.app.state, "upstreams", None)
    if ups is None:
        raise GatewayError(503, "the server is starting; retry shortly", code="not_ready")
    return ups


Ups = Annotated[Upstreams, Depends(upstreams)]


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
    ups: Upstreams, data: bytes, filename: str, content_type: str, *,
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
        body = await ups.stt.transcribe_file(data, filename, content_type, form)
    except UpstreamError as exc:
        if exc.status in (400, 415, 422):
            log.info("stt rejected an upload: %s", exc.detail)
            raise GatewayError(400, "the audio could not be decoded: send WAV, FLAC, MP3, OGG/Opus, WebM or M4A", param="file",
                               code="invalid_audio") from exc
        if exc.status == 413:
            raise GatewayError(413, "audio file larger than 25 MB", param="file", code="file_too_large") from exc
        raise
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


async def transcribe_upload(request: Request, ups: Upstreams, options: type[Opts]) -> tuple[Transcript, Opts]:
    """A multipart upload (`file` plus form fields validated by `options`) transcribed:
    what every API family's speech-to-text route does before shaping its answer."""
    form = await read_form(request)
    data, filename, ctype = await read_upload(form, "file")
    opts = options.model_validate({k: v for k, v in form.multi_items() if isinstance(v, str)})  # type: ignore[attr-defined]
    tr = await transcribe(ups, data, filename, ctype, language=opts.language, prompt=opts.prompt, temperature=opts.temperature)
    return tr, opts


# ---------------------------------------------------------------- chat


async def chat_stream(ups: Upstreams, messages: list[dict[str, str]], **options: Any) -> AsyncIterator[str]:
    """Text deltas of the reply (the session server's chat client: the same auth, retries and errors)."""
    opts = {k: v for k, v in options.items() if v is not None}
    async for delta in ups.chat.stream(messages, **opts):
        if isinstance(delta, str):  # no tools are offered here
            yield delta


async def chat_text(ups: Upstreams, messages: list[dict[str, str]], **options: Any) -> str:
    return "".join([d async for d in chat_stream(ups, messages, **options)]).strip()


# ---------------------------------------------------------------- TTS voices


async def resolve_voice(ups: Upstreams, name: str | None, param: str = "voice") -> str | None:
    """An OpenAI voice name (through the configured map) or a catalog id, else 400. Never a path."""
    if not name:
        return None
    voice_map = ups.cfg.openai_voice_map
    mapped = voice_map.get(name.lower())
    if mapped:
        return mapped
    ids = {"default"} | set(voice_map.values()) | (await ups.voices.ids() or set())
    if name in ids:
        return name
    choices = sorted(ids | set(voice_map))
    raise GatewayError(400, f"unknown voice {name[:60]!r}; choose one of: {', '.join(choices)}", param=param, code="invalid_voice")
