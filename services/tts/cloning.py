"""Voice cloning API (issue 9): POST /v1/voices, GET /v1/voices[/{id}], DELETE /v1/voices/{id}.

The upload is bounded before it is read (Content-Length, then a counted read of the
body stream), sniffed by decoding it (never by its file name), and must hold 3-30 s of
audio. The client sends audio bytes and a few short fields: never a path or a URL.
Validation runs first, so an engine that cannot clone (Piper) answers 501 only for an
otherwise valid request.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from services.tts.registry import TtsContext
from shared.audio import STT_RATE, AudioDecodeError, decode_audio, rms_dbfs
from shared.protocol import VoiceInfo
from shared.service import ServiceError, require_ready

log = logging.getLogger("tts")

MIN_SECONDS, MAX_SECONDS = 3.0, 30.0
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the short text fields
FIELDS = {"file", "name", "consent", "transcript"}


class CloneForm(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    consent: bool
    transcript: str | None = Field(None, max_length=2000)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes:
    from Content-Length before reading, and by counting while reading (the header may lie or be absent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "bad Content-Length header")
        if int(declared) > limit:
            raise ServiceError(413, f"upload too large: at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ServiceError(413, f"upload too large: at most {limit} bytes")
    return bytes(body)


async def parse_upload(request: Request, max_bytes: int) -> tuple[bytes, CloneForm]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ServiceError(400, "send multipart/form-data with fields file, name, consent (and optional transcript)")
    body = await read_bounded(request, max_bytes + FORM_OVERHEAD)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=len(FIELDS))
    except Exception as exc:  # noqa: BLE001 - any multipart parse failure is the client's
        raise ServiceError(400, f"bad multipart body: {getattr(exc, 'detail', None) or type(exc).__name__}") from exc
    try:
        return await _fields(form, max_bytes)
    finally:
        await form.close()  # the spooled upload file


async def _fields(form: FormData, max_bytes: int) -> tuple[bytes, CloneForm]:
    extra = sorted(set(form.keys()) - FIELDS)
    if extra:
        raise ServiceError(400, f"unexpected field {extra[0]!r}: send only file, name, consent, transcript")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ServiceError(400, "field 'file' must be an uploaded reference recording (3-30 s)")
    if form.get("consent") is None or str(form.get("consent")).lower() not in ("true", "1", "yes", "on"):
        raise ServiceError(400, "consent must be true: the speaker agreed to have their voice cloned")
    try:
        fields = CloneForm.model_validate({k: form.get(k) for k in ("name", "consent", "transcript") if form.get(k) is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ServiceError(400, f"field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from exc
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ServiceError(413, f"reference recording too large: at most {max_bytes} bytes")
    return data, fields


def _declared_seconds(data: bytes) -> float | None:
    """The duration a container states, read without decoding (None: it does not say)."""
    try:
        import soundfile as sf

        return float(sf.info(io.BytesIO(data)).duration)
    except Exception:  # noqa: BLE001 - not a soundfile format (MP3 via PyAV, or not audio)
        pass
    try:
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            return container.duration / 1e6 if container.duration else None
    except Exception:  # noqa: BLE001 - decode_audio gives the reason
        return None


def check_reference(data: bytes) -> np.ndarray:
    """Blocking: decode (the sniff) and check duration and level; 16 kHz mono float32.
    A header that states far more than 30 s is refused before decoding: a few MB of
    low-bitrate audio would otherwise expand to hours of float32 samples."""
    declared = _declared_seconds(data)
    if declared is not None and declared > 2 * MAX_SECONDS:
        raise ServiceError(400, f"reference recording is {declared:.1f} s: it must be {MIN_SECONDS:.0f}-{MAX_SECONDS:.0f} s")
    try:
        audio = decode_audio(data, STT_RATE)
    except AudioDecodeError as exc:
        log.info("reference recording not decoded: %s", exc)  # the decoder's text is for the log only
        raise ServiceError(400, "file is not audio we can decode") from exc
    seconds = len(audio) / STT_RATE
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ServiceError(400, f"reference recording is {seconds:.1f} s: it must be {MIN_SECONDS:.0f}-{MAX_SECONDS:.0f} s")
    if rms_dbfs(audio) < -60:
        raise ServiceError(400, "reference recording is silent")
    return audio


def clone_router(ctx: TtsContext) -> APIRouter:
    router = APIRouter(tags=["voices"])
    lock = asyncio.Lock()  # one conditioning computation at a time (GPU memory), and ids checked under it

    @router.post("/v1/voices", status_code=201, summary="Clone a voice from a 3-30 s reference recording")
    async def create_voice(request: Request) -> JSONResponse:
        require_ready(ctx.state)
        data, form = await parse_upload(request, ctx.cfg.clone_max_bytes)
        audio = await asyncio.to_thread(check_reference, data)
        engine = ctx.engines[ctx.default]
        async with lock:
            if engine.can_clone and ctx.catalog.count_cloned() >= ctx.cfg.clone_max_voices:
                raise ServiceError(409, f"{ctx.cfg.clone_max_voices} cloned voices kept already: delete one first")
            voice_id = ctx.catalog.new_id()
            await asyncio.to_thread(engine.add_voice, voice_id, audio, form.transcript)  # Piper: 501
            entry = ctx.catalog.add_cloned(voice_id, form.name, len(audio) / STT_RATE)
        return JSONResponse(entry.model_dump(), status_code=201)

    @router.get("/v1/voices", summary="Every voice (same as GET /voices)", response_model_exclude_none=True)
    async def list_voices() -> list[VoiceInfo]:
        return ctx.catalog.listing()

    @router.get("/v1/voices/{voice_id}", summary="One voice by id")
    async def get_voice(voice_id: str) -> JSONResponse:
        try:
            return JSONResponse(ctx.catalog.get(voice_id).model_dump(exclude_none=True))
        except ServiceError as exc:
            raise ServiceError(404, exc.message) from exc

    @router.delete("/v1/voices/{voice_id}", summary="Delete a cloned voice")
    async def delete_voice(voice_id: str) -> JSONResponse:
        async with lock:
            try:
                ctx.catalog.get(voice_id)
            except ServiceError as exc:
                raise ServiceError(404, exc.message) from exc
            await asyncio.to_thread(ctx.catalog.remove_cloned, voice_id)
        return JSONResponse({"deleted": voice_id})

    return router
