"""STT service (:8001): POST /transcribe with an audio upload, WS /transcribe/stream for live audio."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import Form, Request, UploadFile, WebSocket
from pydantic import BaseModel, Field

from services.stt.engines.base import SttEngine
from services.stt.engines.faster_whisper import FasterWhisperEngine
from services.stt.scheduler import Scheduler
from services.stt.streaming import StreamConnection
from services.stt.turn_model import SmartTurn
from shared.audio import STT_RATE, AudioDecodeError, decode_audio, pcm16_to_float, resample
from shared.config import SttSettings
from shared.logs import setup_logging, user_text
from shared.protocol import LANGUAGE_PATTERN, SttError
from shared.service import ServiceError, create_service, require_ready

log = setup_logging("stt")
logging.getLogger("faster_whisper").setLevel(logging.WARNING)
cfg = SttSettings()
MAX_PROMPT = 1000  # characters of `prompt`; Whisper reads at most the last 223 tokens anyway


def make_engine(cfg: SttSettings) -> SttEngine:
    return {"faster_whisper": FasterWhisperEngine}[cfg.engine](cfg)


engine = make_engine(cfg)
# One model, one inference at a time, shared by uploads and streams (flushes first).
scheduler = Scheduler(workers=1, partial_duty=cfg.partial_duty)


async def _load() -> None:
    await asyncio.to_thread(engine.load)
    await _load_turn_model()


app, state = create_service("stt", _load, log, "Speech to text (faster-whisper).", max_body_mb=cfg.max_upload_mb + 1)


def _to_audio(data: bytes, filename: str, content_type: str, raw_rate: int) -> np.ndarray:
    """Containers are decoded; `.pcm`/`.raw` or audio/l16 uploads are int16 mono PCM."""
    raw = filename.lower().endswith((".pcm", ".raw")) or content_type in ("audio/l16", "audio/pcm")
    if raw:
        if len(data) < 2:
            raise AudioDecodeError("raw PCM upload is empty")
        return resample(pcm16_to_float(data), raw_rate, STT_RATE)
    return decode_audio(data, STT_RATE)


def _check_options(language: str | None, prompt: str | None, temperature: float) -> None:
    if language is not None and (len(language) > 8 or not re.fullmatch(LANGUAGE_PATTERN, language)):
        raise ServiceError(400, "language must be a short language code such as 'en' or 'en-US'")
    if prompt is not None and len(prompt) > MAX_PROMPT:
        raise ServiceError(400, f"prompt longer than {MAX_PROMPT} characters")
    if not 0.0 <= temperature <= 1.0:
        raise ServiceError(400, "temperature must be between 0 and 1")


@app.post("/transcribe", summary="Transcribe an audio file (WAV/FLAC/MP3/OGG, or raw 16 kHz int16 PCM)")
async def transcribe(
    audio_file: UploadFile | None = None,
    file: UploadFile | None = None,
    language: str | None = Form(None, description="language code: en, en-US"),
    prompt: str | None = Form(None, description="text that conditions the decoder (names, spelling, prior context)"),
    temperature: float = Form(0.0, description="0 decodes greedily; up to 1 samples"),
    sample_rate: int = Form(STT_RATE, description="rate of raw PCM uploads", ge=8000, le=192000),
) -> dict:
    require_ready(state)
    _check_options(language or None, prompt, temperature)
    upload = audio_file or file
    if upload is None:
        raise ServiceError(400, "send the audio as multipart field 'audio_file' (or 'file')")
    data = await upload.read()
    if len(data) > cfg.max_upload_mb * 1e6:
        raise ServiceError(413, f"upload larger than {cfg.max_upload_mb} MB")
    t0 = time.perf_counter()
    try:
        audio = await asyncio.to_thread(_to_audio, data, upload.filename or "", upload.content_type or "", sample_rate)
    except AudioDecodeError as exc:
        log.info("upload not decoded: %s", exc)  # the decoder's text is for the log only
        raise ServiceError(400, "not a supported audio file (WAV, FLAC, MP3, OGG, or raw PCM named .pcm/.raw)") from exc
    if audio.size < STT_RATE // 100:
        raise ServiceError(400, "audio shorter than 10 ms")
    result = await scheduler.run("batch", engine.transcribe, audio, language or None, prompt, temperature)
    took = time.perf_counter() - t0
    log.info("transcribed %.2fs of audio in %.0f ms (%d dropped): %s", result.duration, took * 1000, result.dropped_segments, user_text(result.text))
    return {
        "text": result.text,
        "language": result.language,
        "duration": round(result.duration, 3),
        "processing_time": round(took, 4),
        "sentence_end": None if result.sentence_end is None else round(result.sentence_end, 4),
        "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(result.segments)],
    }


@app.websocket("/transcribe/stream")
async def transcribe_stream(ws: WebSocket) -> None:
    """Binary int16 16 kHz PCM in; `partial` while audio arrives, `final` on `flush` (see shared/protocol.py)."""
    await ws.accept()
    if not state.ready or not isinstance(engine, FasterWhisperEngine):
        await ws.send_text(SttError(message=f"model not ready: {state.error or 'loading'}").dump())
        await ws.close(1013)  # try again later
        return
    await StreamConnection(ws, engine, scheduler, cfg.language).run()


# --------------------------------------------------------------------------- audio end of turn

turn_model: SmartTurn | None = None
_turn_pool = ThreadPoolExecutor(1, thread_name_prefix="smart-turn")  # beside the decoder: both run at a pause
MAX_TURN_AUDIO = 30 * STT_RATE * 2  # bytes of int16 PCM; the model reads the last 8 s


async def _load_turn_model() -> None:
    global turn_model
    try:
        turn_model = await asyncio.get_running_loop().run_in_executor(_turn_pool, SmartTurn)
    except Exception:  # optional: without it the session decides on the words alone
        log.exception("Smart Turn model unavailable; POST /end-of-turn answers 503")


class EndOfTurn(BaseModel):
    probability: float = Field(description="P(the speaker has finished their turn), from the sound of the last 8 s")
    processing_time: float


@app.post("/end-of-turn", summary="Smart Turn v3.2 on raw 16 kHz int16 PCM (the body): does it sound finished?")
async def end_of_turn(request: Request) -> EndOfTurn:
    require_ready(state)
    if turn_model is None:
        raise ServiceError(503, "the Smart Turn model is not installed", retryable=False)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_TURN_AUDIO:
        raise ServiceError(413, "send at most 30 s of audio (the model reads the last 8 s)")
    body = await request.body()
    if len(body) > MAX_TURN_AUDIO:
        raise ServiceError(413, "send at most 30 s of audio (the model reads the last 8 s)")
    if len(body) < STT_RATE // 50:
        raise ServiceError(400, "send at least 10 ms of 16 kHz int16 PCM as the request body")
    t0 = time.perf_counter()
    model = turn_model
    p = await asyncio.get_running_loop().run_in_executor(_turn_pool, model.probability, pcm16_to_float(body[: len(body) // 2 * 2]))
    return EndOfTurn(probability=round(p, 4), processing_time=round(time.perf_counter() - t0, 4))
