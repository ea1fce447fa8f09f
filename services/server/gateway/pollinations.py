"""Audio Pollinations on the gateway: GET /audio and POST /audio (the messages shape).

Four modalities over the same services: tts (speak this text), sts (a spoken reply to
speech), stt (transcribe), ttt (a text reply). An explicit `modality` decides; without
one (see infer_modality): speech audio + text asking for a transcript -> stt, speech audio
otherwise -> sts, no audio -> tts. Audio answers are WAV (or JSON with
`response_format: "json"`), text answers JSON. Errors: {"error": {"message", "code"}}.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from services.server.gateway import upstream as up
from services.server.gateway.encode import encode_all
from services.server.gateway.errors import GatewayError, route_class
from services.server.gateway.models import Modality, PolContent, PolRequest
from services.server.upstreams import Upstreams
from shared.clients import UpstreamError

_TRANSCRIBE = re.compile(r"\btranscri(be|bed|bing|pt|ption)\b", re.IGNORECASE)


def pollinations_body(e: GatewayError) -> dict[str, Any]:
    return {"error": {"message": e.message, "code": e.status}}


router = APIRouter(tags=["Audio Pollinations"], route_class=route_class(pollinations_body))


@dataclass
class Job:
    text: str
    system: str | None
    voice: str | None  # a voice name (OpenAI name or catalog id)
    clone_data: bytes | None = None
    clone_transcript: str | None = None
    speech: bytes | None = None
    modality: Modality | None = None


def infer_modality(job: Job) -> Modality:
    """The documented rule when the request names no modality."""
    if job.modality:
        return job.modality
    if job.speech is not None:
        return "stt" if _TRANSCRIBE.search(job.text or "") else "sts"
    return "tts"


async def _clone(ups: Upstreams, job: Job, consent: bool) -> str:
    """A cloned voice id from the TTS service's POST /v1/voices (only with explicit consent)."""
    if not consent:
        raise GatewayError(400, "cloning a voice from voice.data needs \"consent\": true (the speaker agreed)")
    assert job.clone_data is not None
    form = {"name": f"pollinations-{uuid.uuid4().hex[:8]}", "consent": "true"}
    if job.clone_transcript:
        form["transcript"] = job.clone_transcript
    try:
        r = await ups.tts_post("/v1/voices", files={"file": ("reference.wav", job.clone_data, "audio/wav")}, data=form)
    except UpstreamError as exc:
        if exc.status in (404, 405, 501):
            up.log.info("tts voice cloning unavailable: %s", exc.detail)
            raise GatewayError(501, "voice cloning is not available with the configured TTS engine; use voice.name") from exc
        if exc.status in (400, 413, 415, 422):
            up.log.info("tts rejected a clone reference: %s", exc.detail)
            raise GatewayError(400, "the reference audio in voice.data could not be used for cloning") from exc
        if exc.status == 409:
            raise GatewayError(409, "the TTS service keeps no more cloned voices; use voice.name") from exc
        raise
    ident = r.json().get("id")
    if not ident:
        raise UpstreamError("tts", "clone answer without an id", retryable=False)
    return str(ident)


async def run(ups: Upstreams, job: Job, *, consent: bool = False) -> tuple[Modality, str, bytes | None, str | None]:
    """(modality, text answer or spoken text, WAV bytes or None, transcript of the input speech)."""
    modality = infer_modality(job)
    if modality in ("stt", "sts") and job.speech is None:
        raise GatewayError(400, f"modality {modality} needs speech audio (a speech_audio content item)")
    if modality in ("tts", "ttt") and not job.text.strip():
        raise GatewayError(400, "missing required 'text'")
    heard = None
    if job.speech is not None and modality in ("stt", "sts"):
        heard = (await up.transcribe(ups, job.speech, "speech", "application/octet-stream")).text
    if modality == "stt":
        return modality, heard or "", None, heard
    voice = None
    if modality in ("tts", "sts"):
        voice = await _clone(ups, job, consent) if job.clone_data else await up.resolve_voice(ups, job.voice or "alloy")
    if modality == "tts":
        spoken = job.text.strip()
    else:
        system = "\n".join(x for x in (job.system, job.text if modality == "sts" else None) if x)
        user = heard if modality == "sts" else job.text
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user or ""}]
        spoken = await up.chat_text(ups, messages)
        if modality == "ttt":
            return modality, spoken, None, None
    wave = await ups.synthesize(spoken, voice)
    return modality, spoken, await asyncio.to_thread(encode_all, wave, "wav"), heard


def _wav(data: bytes, rid: str, modality: str) -> Response:
    return Response(data, media_type="audio/wav", headers={"Content-Disposition": f"inline; filename={rid}.wav", "X-Modality": modality})


@router.get("/audio", summary="Pollinations GET: speak text (tts), or any modality with ?modality=",
            responses={200: {"content": {"audio/wav": {}, "application/json": {}}}})
async def audio_get(
    ups: up.Ups,
    text: Annotated[str, Query(min_length=1, max_length=4096)],
    system: Annotated[str | None, Query(max_length=4000)] = None,
    voice: Annotated[str | None, Query(max_length=100)] = None,
    modality: Annotated[Modality | None, Query(description="tts (default) or ttt; stt and sts need POST with speech_audio")] = None,
    seed: Annotated[int | None, Query(description="accepted; replies are sampled")] = None,
    response_format: Annotated[str | None, Query(pattern=r"^(wav|json)$")] = None,
) -> Response:
    rid = uuid.uuid4().hex[:16]
    mod, answer, wav, _ = await run(ups, Job(text, system, voice, modality=modality))
    if wav is None:
        return JSONResponse({"text": answer, "request_id": rid, "modality": mod})
    if response_format == "json":
        return JSONResponse({"request_id": rid, "modality": mod, "text": answer, "audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}})
    return _wav(wav, rid, mod)


def _job(body: PolRequest) -> Job:
    system, items = None, []
    for m in body.messages:
        if m.role == "system":
            system = m.content if isinstance(m.content, str) else "\n".join(c.text or "" for c in m.content if c.type == "text") or None
        elif m.role == "user":
            items = [PolContent(type="text", text=m.content)] if isinstance(m.content, str) else list(m.content)
    job = Job("", system, None, modality=body.modality)
    for c in items:
        if c.type == "text" and c.text:
            job.text = c.text
        elif c.type == "voice" and c.voice is not None:
            job.voice = c.voice.name
            if c.voice.data:
                job.clone_data = up.decode_b64(c.voice.data, "voice.data")
        elif c.type == "clone_audio_transcript":
            job.clone_transcript = c.audio_text or c.text
        elif c.type in ("speech_audio", "input_audio") and (a := c.audio or c.input_audio) is not None:
            job.speech = up.decode_b64(a.data, "speech_audio.audio.data")
    if job.clone_data and job.voice and job.voice != "alloy":
        raise GatewayError(400, "Provide either 'voice.data' (base64) or 'voice.name', not both.")
    return job


@router.post("/audio", summary="Pollinations POST: messages with text, voice, clone_audio_transcript, speech_audio",
             responses={200: {"content": {"audio/wav": {}, "application/json": {}}}})
async def audio_post(body: PolRequest, ups: up.Ups) -> Response:
    rid = uuid.uuid4().hex[:16]
    mod, answer, wav, heard = await run(ups, _job(body), consent=body.consent)
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if wav is not None:
        if body.response_format != "json":
            return _wav(wav, rid, mod)
        message["audio"] = {"data": base64.b64encode(wav).decode(), "format": "wav", "transcript": answer}
    out: dict[str, Any] = {"id": rid, "object": "chat.completion", "modality": mod,
                           "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    if heard is not None and mod != "stt":
        out["input_transcript"] = heard
    return JSONResponse(out)
