"""TTS service (:8003): WebSocket /tts/stream streams 24 kHz float32 audio; POST /tts returns a WAV."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from services.tts.engines.base import TtsEngine
from shared.audio import OUT_RATE, float_to_f32le, wav_bytes
from shared.config import TtsSettings
from shared.logs import setup_logging
from shared.protocol import TtsEnd, TtsError, TtsRequest, tts_client_message
from shared.service import ServiceError, create_service, require_ready

log = setup_logging("tts")
cfg = TtsSettings()


def make_engine(cfg: TtsSettings) -> TtsEngine:
    """Engines are imported lazily: cloud and GPU ones need packages the default path lacks."""
    if cfg.engine == "piper":
        from services.tts.engines.piper import PiperEngine

        return PiperEngine(cfg)
    if cfg.engine == "xtts":
        from services.tts.engines.xtts import XttsEngine

        return XttsEngine(cfg)
    if cfg.engine == "cartesia":
        from services.tts.engines.cartesia import CartesiaEngine

        return CartesiaEngine(cfg)
    from services.tts.engines.elevenlabs import ElevenLabsEngine

    return ElevenLabsEngine(cfg)


engine = make_engine(cfg)
app, state = create_service("tts", engine.load, log, "Streaming text to speech.")


class SpeakBody(BaseModel):
    text: str = Field(min_length=1, max_length=2000)
    voice: str | None = None


@app.post("/tts", summary="Synthesize text to a 24 kHz 16-bit WAV (for debugging)", response_class=Response)
async def tts_wav(body: SpeakBody) -> Response:
    require_ready(state)
    t0 = time.perf_counter()
    chunks = [c async for c in engine.stream(body.text, body.voice, cfg.chunk_ms)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    log.info("POST /tts: %.2fs of audio in %.0f ms", len(audio) / OUT_RATE, (time.perf_counter() - t0) * 1000)
    return Response(wav_bytes(audio, OUT_RATE), media_type="audio/wav")


async def _speak(ws: WebSocket, req: TtsRequest) -> None:
    t0 = time.perf_counter()
    first, samples = None, 0
    try:
        async for chunk in engine.stream(req.text, req.voice, cfg.chunk_ms):
            if first is None:
                first = time.perf_counter() - t0
            samples += len(chunk)
            await ws.send_bytes(float_to_f32le(chunk))
    except ServiceError as exc:
        await ws.send_text(TtsError(id=req.id, message=exc.message).dump())
        return
    except Exception as exc:  # an engine failure must end this request, not the connection's worker
        log.exception("synthesis failed")
        await ws.send_text(TtsError(id=req.id, message=f"synthesis failed: {type(exc).__name__}").dump())
        return
    await ws.send_text(TtsEnd(id=req.id, samples=samples).dump())
    log.info("spoke %d chars: first audio %.0f ms, %.2fs audio", len(req.text), (first or 0) * 1000, samples / OUT_RATE)


@app.websocket("/tts/stream")
async def tts_stream(ws: WebSocket) -> None:
    """Send {"text", "voice"?, "id"?} (many per connection); get binary float32 LE 24 kHz
    frames then {"type":"end"} for each. {"type":"cancel"} drops queued and current
    speech and is answered with {"type":"cancelled"} once no stale frame can follow."""
    await ws.accept()
    if not state.ready:
        await ws.send_text(TtsError(message=f"model not ready: {state.error or 'loading'}").dump())
        await ws.close(1013)
        return
    queue: asyncio.Queue[TtsRequest] = asyncio.Queue(maxsize=64)

    async def worker() -> None:
        while True:
            await _speak(ws, await queue.get())

    task = asyncio.create_task(worker())
    try:
        while True:
            raw = await ws.receive_json()
            if isinstance(raw, dict):
                raw.setdefault("type", "speak")
            try:
                msg = tts_client_message.validate_python(raw)
            except ValidationError as exc:
                await ws.send_text(TtsError(message=f"bad message: {exc.errors()[0]['msg']}").dump())
                continue
            if isinstance(msg, TtsRequest):
                if queue.full():
                    await ws.send_text(TtsError(id=msg.id, message="too many queued texts").dump())
                else:
                    queue.put_nowait(msg)
                continue
            task.cancel()  # cancel
            with contextlib.suppress(asyncio.CancelledError):
                await task
            while not queue.empty():
                queue.get_nowait()
            await ws.send_text('{"type":"cancelled"}')
            task = asyncio.create_task(worker())
    except (WebSocketDisconnect, RuntimeError):
        pass
    except ValueError:
        with contextlib.suppress(Exception):
            await ws.send_text(TtsError(message="messages must be JSON objects").dump())
            await ws.close(1003)
    finally:
        task.cancel()
