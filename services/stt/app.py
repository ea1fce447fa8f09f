"""STT service (:8001): POST /transcribe with an audio upload, answers text."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from fastapi import Form, UploadFile

from services.stt.engines.base import SttEngine
from shared.audio import STT_RATE, AudioDecodeError, decode_audio, pcm16_to_float, resample
from shared.config import SttSettings
from shared.logs import setup_logging, user_text
from shared.service import ServiceError, create_service, require_ready

log = setup_logging("stt")
logging.getLogger("faster_whisper").setLevel(logging.WARNING)
cfg = SttSettings()


def make_engine(cfg: SttSettings) -> SttEngine:
    from services.stt.engines.faster_whisper import FasterWhisperEngine

    return {"faster_whisper": FasterWhisperEngine}[cfg.engine](cfg)


engine = make_engine(cfg)
# One model, one inference at a time: parallel calls would only fight over the same cores.
_lock = asyncio.Lock()


async def _load() -> None:
    await asyncio.to_thread(engine.load)


app, state = create_service("stt", _load, log, "Speech to text (faster-whisper).")


def _to_audio(data: bytes, filename: str, content_type: str, raw_rate: int) -> np.ndarray:
    """Containers are decoded; `.pcm`/`.raw` or audio/l16 uploads are int16 mono PCM."""
    raw = filename.lower().endswith((".pcm", ".raw")) or content_type in ("audio/l16", "audio/pcm")
    if raw:
        if len(data) < 2:
            raise AudioDecodeError("raw PCM upload is empty")
        return resample(pcm16_to_float(data), raw_rate, STT_RATE)
    return decode_audio(data, STT_RATE)


@app.post("/transcribe", summary="Transcribe an audio file (WAV/FLAC/MP3/OGG, or raw 16 kHz int16 PCM)")
async def transcribe(
    audio_file: UploadFile | None = None,
    file: UploadFile | None = None,
    language: str | None = Form(None),
    sample_rate: int = Form(STT_RATE, description="rate of raw PCM uploads", ge=8000, le=192000),
) -> dict:
    require_ready(state)
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
        raise ServiceError(400, f"not a supported audio file: {exc}") from exc
    if audio.size < STT_RATE // 100:
        raise ServiceError(400, "audio shorter than 10 ms")
    async with _lock:
        result = await asyncio.to_thread(engine.transcribe, audio, language)
    took = time.perf_counter() - t0
    log.info("transcribed %.2fs of audio in %.0f ms (%d dropped): %s", result.duration, took * 1000, result.dropped_segments, user_text(result.text))
    return {
        "text": result.text,
        "language": result.language,
        "duration": round(result.duration, 3),
        "processing_time": round(took, 4),
    }
