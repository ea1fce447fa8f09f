"""The streaming protocol, one handler for every route (/tts/stream, /tts/stream/{provider}).

Send {"text", "voice"?, "personality"?, "id"?} (many per connection); get binary float32
LE 24 kHz frames then {"type":"end"} for each, or one {"type":"error"} for that request.
{"type":"cancel"} drops queued and current speech and is answered with
{"type":"cancelled"} once no stale frame can follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from services.tts.metrics import ACTIVE_STREAMS, QUEUE_DEPTH, timed_stream
from services.tts.registry import TtsContext
from shared.audio import OUT_RATE, float_to_f32le
from shared.protocol import TtsEnd, TtsError, TtsRequest, tts_client_message
from shared.service import ServiceError

log = logging.getLogger("tts")
QUEUE_MAX = 64  # texts waiting per connection
SEND_TIMEOUT = 10.0  # s a client may leave a frame unread before its stream is closed


class NotReading(Exception):
    """The client left a frame unread for SEND_TIMEOUT."""


async def _send(ws: WebSocket, chunk: np.ndarray) -> None:
    # bounded: a client that stops reading must not hold a synthesis worker (and everyone behind it)
    try:
        await asyncio.wait_for(ws.send_bytes(float_to_f32le(chunk)), SEND_TIMEOUT)
    except TimeoutError as exc:
        raise NotReading from exc


async def _speak(ws: WebSocket, ctx: TtsContext, req: TtsRequest, route: str | None, opening: bool) -> None:
    """One text; `opening`: the stream's first (a reply starting), which the gate lets go first."""
    t0 = time.perf_counter()
    first, samples = None, 0
    try:
        engine, voice = ctx.pick(req.voice, req.personality, route)
        async with ctx.gate.slot(urgent=opening) if engine.local else contextlib.nullcontext():
            async for chunk in timed_stream(engine, req.text, voice, ctx.cfg.chunk_ms):
                if first is None:
                    first = time.perf_counter() - t0
                samples += len(chunk)
                await _send(ws, chunk)
    except NotReading:
        log.warning("client not reading for %.0fs: closing the stream", SEND_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(1008, "client is not reading"), 1.0)
        return
    except ServiceError as exc:
        await ws.send_text(TtsError(id=req.id, message=exc.message).dump())
        return
    except Exception as exc:  # an engine failure must end this request, not the connection's worker
        log.exception("synthesis failed")
        await ws.send_text(TtsError(id=req.id, message=f"synthesis failed: {type(exc).__name__}").dump())
        return
    await ws.send_text(TtsEnd(id=req.id, samples=samples).dump())
    log.info("spoke %d chars: first audio %.0f ms, %.2fs audio", len(req.text), (first or 0) * 1000, samples / OUT_RATE)


async def _refuse(ws: WebSocket, message: str, code: int, reason: str) -> None:
    await ws.send_text(TtsError(message=message).dump())
    await ws.close(code, reason[:120])  # a close reason is at most 123 bytes


async def serve_stream(ws: WebSocket, ctx: TtsContext, route: str | None) -> None:
    """Serve one connection; `route` is the provider named in the path, None for the default engine."""
    await ws.accept()
    if not ctx.state.ready:
        await _refuse(ws, f"model not ready: {ctx.state.error or 'loading'}", 1013, "not ready")
        return
    if route is not None and route in ctx.unavailable:
        await _refuse(ws, ctx.unavailable[route], 1011, f"{route} not configured")
        return
    label = route or "default"
    ACTIVE_STREAMS.labels(label).inc()
    queue: asyncio.Queue[TtsRequest] = asyncio.Queue(maxsize=QUEUE_MAX)

    spoken = 0  # texts this connection has had spoken (or begun)

    async def worker() -> None:
        nonlocal spoken
        while True:
            req = await queue.get()
            QUEUE_DEPTH.dec()
            spoken += 1
            await _speak(ws, ctx, req, route, opening=spoken == 1)

    def drain() -> None:
        while not queue.empty():
            queue.get_nowait()
            QUEUE_DEPTH.dec()

    task = asyncio.create_task(worker())
    try:
        while True:
            raw = await ws.receive_json()
            if isinstance(raw, dict):
                raw.setdefault("type", "speak")
            try:
                msg = tts_client_message.validate_python(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"][1:]) or "message"
                await ws.send_text(TtsError(message=f"bad message: {where}: {err['msg']}").dump())
                continue
            if isinstance(msg, TtsRequest):
                if queue.full():
                    await ws.send_text(TtsError(id=msg.id, message="too many queued texts").dump())
                else:
                    queue.put_nowait(msg)
                    QUEUE_DEPTH.inc()
                continue
            task.cancel()  # cancel
            with contextlib.suppress(asyncio.CancelledError):
                await task
            drain()
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
        drain()
        ACTIVE_STREAMS.labels(label).dec()
