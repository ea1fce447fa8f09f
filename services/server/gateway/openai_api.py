"""OpenAI-compatible audio on the gateway: transcriptions, speech, chat with audio, models.

Shapes follow OpenAI's API reference; errors are OpenAI's error object. The work is done
by the STT, chat and TTS services (upstream.py); this module only translates.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from services.server.gateway import upstream as up
from services.server.gateway.encode import MEDIA_TYPES, Encoder, encode_all
from services.server.gateway.errors import GatewayError, openai_body, route_class, to_gateway_error
from services.server.gateway.models import (
    ChatMessageIn,
    ChatRequest,
    Segment,
    SpeechRequest,
    TranscriptionForm,
    TranscriptionVerbose,
)
from services.server.gateway.openapi import multipart_doc
from services.server.gateway.streams import encoded, guard_bytes, primed
from services.server.upstreams import Upstreams
from shared.clients import UpstreamError
from shared.text_chunker import TextChunker

router = APIRouter(tags=["OpenAI-compatible"], route_class=route_class(openai_body))

_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "pt": "portuguese",
              "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese", "ko": "korean", "pl": "polish"}
AUDIO_TTL = 3600  # seconds an audio reply id stays valid as a reference in later messages


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


# ---------------------------------------------------------------- transcriptions


def _timestamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitles(segments: list[Segment], fmt: str) -> str:
    if fmt == "srt":
        return "".join(f"{i + 1}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n\n" for i, s in enumerate(segments))
    return "WEBVTT\n\n" + "".join(f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n\n" for s in segments)


@router.post("/v1/audio/transcriptions", summary="Transcribe an audio file (OpenAI createTranscription)",
             openapi_extra=multipart_doc(TranscriptionForm, "file"))
async def transcriptions(request: Request, ups: up.Ups) -> Response:
    tr, opts = await up.transcribe_upload(request, ups, TranscriptionForm)
    segments = [Segment(id=s.id, start=s.start, end=s.end, text=s.text, temperature=opts.temperature or 0.0) for s in tr.segments]
    if opts.stream:
        async def events() -> AsyncIterator[str]:
            for i, s in enumerate(segments):
                yield _sse({"type": "transcript.text.delta", "delta": (" " if i else "") + s.text})
            yield _sse({"type": "transcript.text.done", "text": tr.text})
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    fmt = opts.response_format
    if fmt == "text":
        return PlainTextResponse(tr.text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(segments, fmt), media_type="text/plain" if fmt == "srt" else "text/vtt")
    if fmt == "verbose_json":
        verbose = TranscriptionVerbose(language=_LANGUAGES.get(tr.language, tr.language), duration=tr.duration, text=tr.text, segments=segments)
        return JSONResponse(verbose.model_dump())
    return JSONResponse({"text": tr.text})


# ---------------------------------------------------------------- speech


def _tempo(audio: AsyncIterator[np.ndarray], speed: float) -> AsyncIterator[np.ndarray]:
    if abs(speed - 1.0) < 1e-3:
        return audio
    from services.server.gateway.encode import tempo_stream

    return tempo_stream(audio, speed)


@router.post("/v1/audio/speech", summary="Text to speech, streamed as it is synthesized (OpenAI createSpeech)",
             response_class=Response, responses={200: {"content": {t: {} for t in (*MEDIA_TYPES.values(), "text/event-stream")}}})
async def speech(body: SpeechRequest, ups: up.Ups) -> Response:
    voice = await up.resolve_voice(ups, body.voice_name)
    chunks = await primed(encoded(_tempo(ups.speak_audio(body.input, voice), body.speed), body.response_format))
    if body.stream_format == "audio":
        return StreamingResponse(guard_bytes(chunks), media_type=MEDIA_TYPES[body.response_format])

    async def events() -> AsyncIterator[str]:
        try:
            async for b in chunks:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(b).decode()})
        except Exception as exc:  # noqa: BLE001 - headers are gone: report in-band
            yield _sse(openai_body(to_gateway_error(exc)))
            return
        n = len(body.input.split())
        yield _sse({"type": "speech.audio.done", "usage": {"input_tokens": n, "output_tokens": 0, "total_tokens": n}})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------- chat completions


class _AudioStore:
    """Transcripts of recent audio replies, so a later message may refer to one by id."""

    def __init__(self, size: int = 1000) -> None:
        self.size, self._data = size, OrderedDict[str, tuple[float, str]]()

    def put(self, ident: str, transcript: str) -> None:
        self._data[ident] = (time.time() + AUDIO_TTL, transcript)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def get(self, ident: str) -> str | None:
        hit = self._data.get(ident)
        return hit[1] if hit and hit[0] > time.time() else None


audio_store = _AudioStore()


async def _message_text(ups: Upstreams, i: int, m: ChatMessageIn) -> str:
    if isinstance(m.content, str):
        return m.content
    parts: list[str] = []
    for j, p in enumerate(m.content or []):
        if p.type in ("text", "input_text") and p.text:
            parts.append(p.text)
        elif p.type == "input_audio" and p.input_audio is not None:
            fmt = "pcm" if p.input_audio.format == "pcm16" else p.input_audio.format
            raw = up.decode_b64(p.input_audio.data, f"messages[{i}].content[{j}].input_audio.data")
            if fmt == "pcm":  # the STT service reads raw PCM at 16 kHz; OpenAI's pcm16 is 24 kHz
                raise GatewayError(400, "input_audio format pcm16 is not supported; send wav or mp3",
                                   param=f"messages[{i}].content[{j}].input_audio.format")
            tr = await up.transcribe(ups, raw, f"input.{fmt}", f"audio/{fmt}")
            parts.append(tr.text)
    if not parts and m.audio is not None:
        parts.append(audio_store.get(m.audio.id) or "")
    return "\n".join(x for x in parts if x)


async def chat_messages(ups: Upstreams, messages: list[ChatMessageIn]) -> list[dict[str, str]]:
    """OpenAI messages (text parts, input_audio parts, audio references) as the chat service's text messages."""
    texts = await asyncio.gather(*(_message_text(ups, i, m) for i, m in enumerate(messages)))
    out = [{"role": "system" if m.role == "developer" else m.role, "content": t[:8000]} for m, t in zip(messages, texts, strict=True)]
    return [m for m in out if m["content"] or m["role"] == "user"]


async def _text_only(ups: Upstreams, body: ChatRequest, messages: list[dict[str, str]]) -> Response:
    """Exactly what the chat service answers (its JSON, or its event stream passed through)."""
    payload = {"messages": messages, "stream": body.stream, **{k: v for k, v in body.options().items() if v is not None}}
    try:
        if not body.stream:
            return JSONResponse(await ups.chat.complete(payload))
        events = await primed(ups.chat.relay(payload))
    except UpstreamError as exc:
        if exc.status in (400, 422):
            up.log.info("chat rejected a request: %s", exc.detail)
            raise GatewayError(400, "the chat service rejected the messages", param="messages") from exc
        raise
    return StreamingResponse(guard_bytes(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def reply_pieces(ups: Upstreams, messages: list[dict[str, str]], options: dict[str, Any]) -> AsyncIterator[str]:
    """The chat reply cut into speakable pieces as it streams (first clause early)."""
    chunker = TextChunker(first_max_words=ups.cfg.first_chunk_max_words)
    opts = {k: v for k, v in options.items() if k != "model"}
    async for delta in up.chat_stream(ups, messages, **opts):
        for piece in chunker.push(delta):
            yield piece
    for piece in chunker.flush():
        yield piece


def _completion(cid: str, model: str, message: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


@router.post("/v1/chat/completions", summary="Chat completion; modalities [text, audio] speak the reply (OpenAI createChatCompletion)")
async def chat_completions(body: ChatRequest, ups: up.Ups) -> Response:
    if body.wants_audio and body.audio is None:
        raise GatewayError(400, "audio output needs the 'audio' parameter: {\"voice\", \"format\"}", param="audio")
    voice = await up.resolve_voice(ups, body.audio.voice_name, "audio.voice") if body.audio and body.wants_audio else None
    messages = await chat_messages(ups, body.messages)
    if not body.wants_audio or body.audio is None:
        return await _text_only(ups, body, messages)
    fmt = "pcm" if body.audio.format == "pcm16" else body.audio.format
    cid, aid, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", f"audio_{uuid.uuid4().hex[:24]}", body.model or "gpt-4o-audio-preview"
    expires = int(time.time()) + AUDIO_TTL
    if not body.stream:
        text = await up.chat_text(ups, messages, **{k: v for k, v in body.options().items() if k != "model"})
        audio = await ups.synthesize(text, voice) if text else np.zeros(0, np.float32)
        data = await asyncio.to_thread(encode_all, audio, fmt)
        audio_store.put(aid, text)
        message = {"role": "assistant", "content": None, "refusal": None,
                   "audio": {"id": aid, "data": base64.b64encode(data).decode(), "expires_at": expires, "transcript": text}}
        return JSONResponse(_completion(cid, model, message))
    spoken = await primed(ups.speak(reply_pieces(ups, messages, body.options()), voice))
    return StreamingResponse(_audio_events(spoken, fmt, cid, aid, model, expires), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _audio_events(spoken: AsyncIterator[str | np.ndarray], fmt: str, cid: str, aid: str, model: str,
                        expires: int) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    enc, said = Encoder(fmt), list[str]()
    yield chunk({"role": "assistant", "content": None, "audio": {"id": aid, "transcript": ""}})
    try:
        async for item in spoken:
            if isinstance(item, str):
                yield chunk({"audio": {"id": aid, "transcript": (" " if said else "") + item}})
                said.append(item)
            elif data := await asyncio.to_thread(enc.push, item):
                yield chunk({"audio": {"id": aid, "data": base64.b64encode(data).decode()}})
        if data := await asyncio.to_thread(enc.finish):
            yield chunk({"audio": {"id": aid, "data": base64.b64encode(data).decode()}})
    except Exception as exc:  # noqa: BLE001 - headers are gone: report in-band, as OpenAI does
        yield _sse(openai_body(to_gateway_error(exc)))
        return
    audio_store.put(aid, " ".join(said))
    yield chunk({"audio": {"id": aid, "expires_at": expires}}, "stop")
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- models

_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tts-1", "tts-1-hd", "gpt-4o-mini-tts",
           "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview")


@router.get("/v1/models", summary="Models this gateway answers to (all served by the embedded engines)")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "s2s"} for m in _MODELS]}
