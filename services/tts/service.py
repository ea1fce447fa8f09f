"""The TTS service's routes over a TtsContext (engines + voice catalog).

Streams: WS /tts/stream (the voice's engine, default TTS_ENGINE) and vocal.fun's
WS /tts/stream/{cartesia|elevenlabs} (that provider), one handler for all.
WAV: POST /tts, GET /tts, GET /tts/{provider}. Voices: GET /voices, /v1/voices (cloning).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, WebSocket
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.tts.cloning import FORM_OVERHEAD, clone_router
from services.tts.metrics import timed_stream
from services.tts.registry import TtsContext
from services.tts.stream import serve_stream
from shared.audio import OUT_RATE, wav_bytes
from shared.protocol import VoiceInfo
from shared.service import create_service, require_ready

log = logging.getLogger("tts")
Provider = Literal["cartesia", "elevenlabs"]
WAV = {"content": {"audio/wav": {}}, "description": "24 kHz 16-bit mono WAV"}


class SpeakBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000)
    voice: str | None = Field(None, description="a voice id from GET /voices")
    personality: str | None = Field(None, max_length=128, description="an agent id or name: that agent's voice")


async def _wav(ctx: TtsContext, body: SpeakBody, route: str | None) -> Response:
    require_ready(ctx.state)
    engine, voice = ctx.pick(body.voice, body.personality, route)
    t0 = time.perf_counter()
    chunks = [c async for c in timed_stream(engine, body.text, voice, ctx.cfg.chunk_ms)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    log.info("%s WAV: %.2fs of audio in %.0f ms", engine.name, len(audio) / OUT_RATE, (time.perf_counter() - t0) * 1000)
    return Response(wav_bytes(audio, OUT_RATE), media_type="audio/wav")


def create_app(ctx: TtsContext) -> FastAPI:
    body_mb = (ctx.cfg.clone_max_bytes + FORM_OVERHEAD) / 1e6  # the largest body: a clone upload
    app, state = create_service("tts", ctx.load, log, "Streaming text to speech; voices by catalog id.", max_body_mb=body_mb)
    ctx.state = state

    @app.get("/voices", tags=["voices"], summary="The voice catalog: ids every route accepts", response_model_exclude_none=True)
    async def voices() -> list[VoiceInfo]:
        return ctx.catalog.listing()

    @app.post("/tts", summary="Synthesize text to a 24 kHz 16-bit WAV", response_class=Response, responses={200: WAV})
    async def tts_post(body: SpeakBody) -> Response:
        return await _wav(ctx, body, None)

    @app.get("/tts", summary="Synthesize ?text= (and voice=, personality=) to a WAV", response_class=Response, responses={200: WAV})
    async def tts_get(body: SpeakBody = Query()) -> Response:  # noqa: B008 - FastAPI's query-model idiom
        return await _wav(ctx, body, None)

    @app.get("/tts/{provider}", summary="Synthesize with the named provider to a WAV", response_class=Response, responses={200: WAV})
    async def tts_get_provider(provider: Provider, body: SpeakBody = Query()) -> Response:  # noqa: B008
        return await _wav(ctx, body, provider)

    @app.websocket("/tts/stream")
    async def tts_stream(ws: WebSocket) -> None:
        await serve_stream(ws, ctx, None)

    @app.websocket("/tts/stream/{provider}")
    async def tts_stream_provider(ws: WebSocket, provider: Provider) -> None:
        await serve_stream(ws, ctx, provider)

    app.include_router(clone_router(ctx))
    return app
