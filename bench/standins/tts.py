"""TTS stand-in: `WS /tts/stream` with the messages of services/tts/stream.py, a tone for audio."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from shared.audio import OUT_RATE, float_to_f32le
from shared.protocol import TtsEnd, TtsError, TtsRequest, VoiceInfo, tts_client_message
from shared.service import create_service

log = logging.getLogger("standin.tts")
SECONDS = 0.5  # audio per request
FRAME = OUT_RATE * 80 // 1000  # 80 ms, the real service's largest frame
QUEUE_MAX = 64
_t = np.arange(int(SECONDS * OUT_RATE)) / OUT_RATE
TONE = (0.1 * np.sin(2 * np.pi * 220 * _t)).astype(np.float32)
FRAMES = [float_to_f32le(TONE[i : i + FRAME]) for i in range(0, len(TONE), FRAME)]


def rtf() -> float:
    """Wall seconds per second of audio (0: every frame at once)."""
    return float(os.environ.get("STANDIN_TTS_RTF", "0.05"))


async def _speak(ws: WebSocket, req: TtsRequest, pace: float) -> None:
    for i, frame in enumerate(FRAMES):
        if i and pace > 0:
            await asyncio.sleep(FRAME / OUT_RATE * pace)
        await ws.send_bytes(frame)
    await ws.send_text(TtsEnd(id=req.id, samples=len(TONE)).dump())


async def serve_stream(ws: WebSocket) -> None:
    """One connection: speak requests in order; cancel drops what is queued and playing."""
    await ws.accept()
    queue: asyncio.Queue[TtsRequest] = asyncio.Queue(maxsize=QUEUE_MAX)
    pace = rtf()

    async def worker() -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the peer went away mid-frame
            while True:
                await _speak(ws, await queue.get(), pace)

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
            task.cancel()
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


async def _nothing() -> None:
    return None


def create_app() -> FastAPI:
    app, _ = create_service("tts", _nothing, log, "TTS stand-in (bench/standins).")
    voice = VoiceInfo(id="default", name="Stand-in tone", engine="standin", language="en", sample_rate=OUT_RATE)

    @app.get("/voices")
    async def voices() -> list[VoiceInfo]:
        return [voice]

    app.websocket("/tts/stream")(serve_stream)
    return app
