"""GemmaVoice Speech API on the gateway: /v1/generate, /v1/speech-to-text, /v1/text-to-speech,
/v1/dialogue and the WebSockets /ws/stt and /ws/tts.

Shapes follow GemmaVoice's schemas (generated_text; text/language/segments; audio_base64 with
response_format, media_type, sample_rate, reference_id); errors are {"error", "code", "status"}.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from services.server.gateway import upstream as up
from services.server.gateway.encode import MEDIA_TYPES, Encoder, encode_all
from services.server.gateway.errors import GatewayError, route_class, simple_body, to_gateway_error
from services.server.gateway.models import (
    DialogueResponse,
    DialogueTimings,
    GenerateRequest,
    GenerateResponse,
    Segment,
    SttResponse,
    TtsRequest,
    TtsResponse,
)
from services.server.gateway.openapi import multipart_doc
from services.server.gateway.streams import encoded, guard_bytes, primed
from services.server.upstreams import Upstreams
from shared.audio import OUT_RATE, STT_RATE, pcm16_to_float

log = logging.getLogger("server.gateway")
router = APIRouter(tags=["GemmaVoice"], route_class=route_class(simple_body))

WS_MAX_SECONDS = 30.0  # audio buffered by /ws/stt before it transcribes on its own
WS_MAX_TEXT = 4096


def _options(req: GenerateRequest) -> dict[str, Any]:
    return {"max_tokens": req.max_tokens, "temperature": req.temperature, "stop": req.stop or None}


@router.post("/v1/generate", response_model=GenerateResponse, summary="Generate text from a prompt")
async def generate(body: GenerateRequest, ups: up.Ups) -> GenerateResponse:
    text = await up.chat_text(ups, [{"role": "user", "content": body.prompt}], **_options(body))
    return GenerateResponse(generated_text=text)


class SttForm(BaseModel):
    language: str | None = Field(None, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z]{2,4})?$")
    prompt: str | None = Field(None, max_length=4000)
    response_format: str | None = Field(None, pattern=r"^(json|verbose_json|text|srt|vtt)$")
    temperature: float | None = Field(None, ge=0, le=1)


def _stt_response(tr: up.Transcript) -> SttResponse:
    segs = [Segment(id=s.id, start=s.start, end=s.end, text=s.text) for s in tr.segments]
    return SttResponse(text=tr.text, language=tr.language, segments=segs)


@router.post("/v1/speech-to-text", response_model=SttResponse, summary="Transcribe an uploaded audio file",
             openapi_extra=multipart_doc(SttForm, "file"))
async def speech_to_text(request: Request, ups: up.Ups) -> SttResponse:
    tr, _ = await up.transcribe_upload(request, ups, SttForm)
    return _stt_response(tr)


async def _voice(ups: Upstreams, reference_id: str | None) -> str | None:
    return await up.resolve_voice(ups, reference_id, "reference_id")


@router.post("/v1/text-to-speech", response_model=TtsResponse, summary="Synthesize speech: base64 JSON, or audio streamed with stream: true",
             responses={200: {"content": {"application/json": {}, **{t: {} for t in MEDIA_TYPES.values()}}}})
async def text_to_speech(body: TtsRequest, ups: up.Ups) -> Response:
    voice = await _voice(ups, body.reference_id)
    audio = ups.speak_audio(body.text, voice)
    if body.speed != 1.0:
        from services.server.gateway.encode import tempo_stream

        audio = tempo_stream(audio, body.speed)
    headers = {"x-audio-format": body.format, "x-sample-rate": str(OUT_RATE)} | ({"x-reference-id": body.reference_id} if body.reference_id else {})
    if body.stream:
        chunks = await primed(encoded(audio, body.format))
        return StreamingResponse(guard_bytes(chunks), media_type=MEDIA_TYPES[body.format], headers=headers)
    parts = [c async for c in audio]
    data = await asyncio.to_thread(encode_all, np.concatenate(parts) if parts else np.zeros(0, np.float32), body.format)
    return JSONResponse(TtsResponse(audio_base64=base64.b64encode(data).decode(), response_format=body.format,
                                    media_type=MEDIA_TYPES[body.format], sample_rate=OUT_RATE,
                                    reference_id=body.reference_id).model_dump())


class DialogueJson(BaseModel):
    text: str | None = Field(None, max_length=4000, description="the user's words, when no audio is sent")
    audio_base64: str | None = Field(None, description="the user's speech (any format STT reads)")
    instructions: str | None = Field(None, max_length=4000, description="system prompt for the reply")
    generation_config: dict[str, Any] = Field(default_factory=dict)
    synthesis_config: dict[str, Any] = Field(default_factory=dict)


def _json_field(raw: str | None, name: str) -> dict[str, Any]:
    if raw in (None, "", "null"):
        return {}
    try:
        val = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise GatewayError(400, f"invalid JSON for '{name}'", param=name) from exc
    if not isinstance(val, dict):
        raise GatewayError(400, f"'{name}' must be a JSON object", param=name)
    return val


async def _dialogue_input(request: Request) -> tuple[DialogueJson, tuple[bytes, str, str] | None]:
    if request.headers.get("content-type", "").startswith("application/json"):
        raw = await request.body()
        if len(raw) > up.MAX_B64_AUDIO + 65536:
            raise GatewayError(413, "request body larger than 25 MB")
        try:
            body = DialogueJson.model_validate_json(raw)
        except ValidationError as exc:
            raise to_gateway_error(exc) from exc
        audio = (up.decode_b64(body.audio_base64, "audio_base64"), "audio", "application/octet-stream") if body.audio_base64 else None
        return body, audio
    form = await up.read_form(request)
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    body = DialogueJson.model_validate({"text": fields.get("text"), "instructions": fields.get("instructions"),
                                        "generation_config": _json_field(fields.get("generation_config"), "generation_config"),
                                        "synthesis_config": _json_field(fields.get("synthesis_config"), "synthesis_config")})
    return body, (await up.read_upload(form, "file")) if form.get("file") is not None else None


@router.post("/v1/dialogue", response_model=DialogueResponse, summary="Speech (or text) in: transcript, reply text, reply audio, timings",
             openapi_extra=multipart_doc(None, "file", required=()))
async def dialogue(request: Request, ups: up.Ups) -> DialogueResponse:
    """Multipart (`file` or `text`, `instructions`, `generation_config`, `synthesis_config` as JSON
    strings) or JSON (`text` or `audio_base64`, `instructions`, ...)."""
    t0 = time.perf_counter()
    body, audio = await _dialogue_input(request)
    if audio is None and not (body.text or "").strip():
        raise GatewayError(400, "send the user's speech as 'file' (or 'audio_base64'), or their words as 'text'", param="file")
    synth = TtsRequest.model_validate({"text": ".", **body.synthesis_config})
    gen = GenerateRequest.model_validate({"prompt": ".", "max_tokens": 60, **body.generation_config})
    voice = await _voice(ups, synth.reference_id)
    stt_ms = None
    if audio is not None:
        tr = await up.transcribe(ups, *audio)
        stt_ms, transcript = tr.seconds * 1000, _stt_response(tr)
    else:
        transcript = SttResponse(text=(body.text or "").strip(), language=None)
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + [{"role": "user", "content": transcript.text}]
    t1 = time.perf_counter()
    reply = await up.chat_text(ups, messages, **_options(gen)) if transcript.text else ""
    t2 = time.perf_counter()
    wave = await ups.synthesize(reply, voice) if reply else np.zeros(0, np.float32)
    data = await asyncio.to_thread(encode_all, wave, synth.format)
    t3 = time.perf_counter()
    timings = DialogueTimings(stt_ms=stt_ms, llm_ms=(t2 - t1) * 1000, tts_ms=(t3 - t2) * 1000, total_ms=(t3 - t0) * 1000)
    return DialogueResponse(transcript=transcript, response_text=reply, audio_base64=base64.b64encode(data).decode(),
                            response_format=synth.format, media_type=MEDIA_TYPES[synth.format], sample_rate=OUT_RATE,
                            reference_id=synth.reference_id, timings=timings)


# ---------------------------------------------------------------- WebSockets


async def _ws_error(ws: WebSocket, exc: Exception) -> None:
    e = to_gateway_error(exc)
    await ws.send_json({"event": "error", "detail": e.message, "status": e.status})


@router.websocket("/ws/stt")
async def ws_stt(ws: WebSocket, ups: up.Ups) -> None:
    """Binary frames: int16 LE mono PCM at 16 kHz. {"event": "commit"} (or a buffer of 30 s)
    transcribes what came since the last commit: {"event": "transcript", "text", "duration"}.
    {"event": "close"} ends the socket."""
    await ws.accept()
    buf, limit = bytearray(), int(WS_MAX_SECONDS * STT_RATE * 2)

    async def commit() -> None:
        nonlocal buf
        pcm, buf = bytes(buf), bytearray()
        if len(pcm) < STT_RATE // 50:  # under 10 ms
            await ws.send_json({"event": "warning", "detail": "no audio to transcribe"})
            return
        try:
            text = await ups.stt.transcribe(pcm16_to_float(pcm))
        except Exception as exc:  # noqa: BLE001 - reported on the socket, which stays open
            await _ws_error(ws, exc)
            return
        await ws.send_json({"event": "transcript", "text": text, "duration": round(len(pcm) / 2 / STT_RATE, 3)})

    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if (data := msg.get("bytes")) is not None:
                buf.extend(data)  # frames are bounded app-wide, so the buffer stays near `limit`
                if len(buf) >= limit:
                    await commit()
                continue
            try:
                event = json.loads(msg.get("text") or "").get("event")
            except (json.JSONDecodeError, AttributeError):
                await ws.send_json({"event": "error", "detail": "text frames must be JSON objects like {\"event\": \"commit\"}", "status": 400})
                continue
            if event == "commit":
                await commit()
            elif event == "close":
                if buf:
                    await commit()
                await ws.close(1000)
                return
            else:
                await ws.send_json({"event": "error", "detail": "unknown event; use commit or close", "status": 400})
    except (WebSocketDisconnect, RuntimeError):
        return


class WsSpeak(BaseModel):
    text: str = Field(min_length=1, max_length=WS_MAX_TEXT)
    reference_id: str | None = Field(None, max_length=100)
    voice: str | None = Field(None, max_length=100)
    format: str = Field("pcm", pattern=r"^(pcm|wav|mp3|opus|flac|aac)$")


@router.websocket("/ws/tts")
async def ws_tts(ws: WebSocket, ups: up.Ups) -> None:
    """Send {"text", "reference_id"?, "format"? (pcm: int16 LE 24 kHz)}; receive binary audio
    chunks as they are synthesized, then {"event": "done", "bytes"}. Many texts per socket."""
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            try:
                if msg.get("text") is None:
                    raise GatewayError(400, "send text frames: {\"text\": ...}")
                req = WsSpeak.model_validate_json(msg["text"])
                voice = await up.resolve_voice(ups, req.reference_id or req.voice, "reference_id")
                enc, sent = Encoder(req.format), 0
                async for chunk in ups.speak_audio(req.text, voice):
                    if out := await asyncio.to_thread(enc.push, chunk):
                        sent += len(out)
                        await ws.send_bytes(out)
                if out := await asyncio.to_thread(enc.finish):
                    sent += len(out)
                    await ws.send_bytes(out)
                await ws.send_json({"event": "done", "bytes": sent, "sample_rate": OUT_RATE, "format": req.format})
            except (WebSocketDisconnect, RuntimeError):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad request does not end the socket
                await _ws_error(ws, exc)
    except (WebSocketDisconnect, RuntimeError):
        with contextlib.suppress(Exception):
            await ws.close()
