"""STT stand-in: `POST /transcribe` as services/stt/app.py answers it, without a model."""

from __future__ import annotations

import io
import logging
import time

import soundfile as sf
from fastapi import FastAPI, Form, UploadFile

from shared.audio import STT_RATE
from shared.service import ServiceError, create_service

log = logging.getLogger("standin.stt")
SENTENCES = ["Please tell me something nice.", "What could we cook tonight?", "I have rice, beans and tomatoes.",
             "The weather is lovely today.", "Maybe we could go for a walk later.", "Thanks for your help."]
WORDS_PER_SECOND = 2.5


def text_for(duration: float) -> str:
    """Whole sentences, about as many words as people speak in `duration` seconds (at least one)."""
    want, words = max(2, round(duration * WORDS_PER_SECOND)), 0
    out: list[str] = []
    while words < want:
        s = SENTENCES[len(out) % len(SENTENCES)]
        out.append(s)
        words += len(s.split())
    return " ".join(out)


def _duration(data: bytes, filename: str, content_type: str, sample_rate: int) -> float:
    if content_type.startswith("audio/l16") or filename.endswith((".pcm", ".raw")):
        return len(data) // 2 / sample_rate
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ServiceError(400, f"not a supported audio file: {exc}") from exc
    return float(info.duration)


async def _nothing() -> None:
    return None


def create_app() -> FastAPI:
    app, _ = create_service("stt", _nothing, log, "STT stand-in (bench/standins).", max_body_mb=26)

    @app.post("/transcribe")
    async def transcribe(
        audio_file: UploadFile | None = None,
        file: UploadFile | None = None,
        language: str | None = Form(None),
        sample_rate: int = Form(STT_RATE, ge=8000, le=192000),
    ) -> dict:
        t0 = time.perf_counter()
        upload = audio_file or file
        if upload is None:
            raise ServiceError(400, "send the audio as multipart field 'audio_file' (or 'file')")
        duration = _duration(await upload.read(), upload.filename or "", upload.content_type or "", sample_rate)
        if duration < 0.01:
            raise ServiceError(400, "audio shorter than 10 ms")
        text = text_for(duration)
        return {
            "text": text,
            "language": language or "en",
            "duration": round(duration, 3),
            "processing_time": round(time.perf_counter() - t0, 4),
            "segments": [{"id": 0, "start": 0.0, "end": round(duration, 3), "text": text}],
        }

    return app
