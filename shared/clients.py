"""Network clients the session server uses for the three services.

Errors are translated here, at the boundary, into `UpstreamError` with a
`retryable` flag and the service's name, so the session can tell the user what failed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import websockets

from shared.audio import f32le_to_float, float_to_pcm16
from shared.service import ServiceError
from shared.sse import iter_sse_deltas


class UpstreamError(Exception):
    def __init__(self, service: str, message: str, retryable: bool = True) -> None:
        super().__init__(f"{service}: {message}")
        self.service, self.message, self.retryable = service, message, retryable


class SttClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http, self.url = http, base_url.rstrip("/") + "/transcribe"

    async def transcribe(self, audio: np.ndarray) -> str:
        """16 kHz float32 in; sent as raw int16 PCM (no container to decode)."""
        files = {"audio_file": ("utterance.pcm", float_to_pcm16(audio).tobytes(), "audio/l16")}
        try:
            r = await self.http.post(self.url, files=files)
        except httpx.HTTPError as exc:
            raise UpstreamError("stt", f"unreachable ({type(exc).__name__})") from exc
        if r.status_code != 200:
            raise UpstreamError("stt", _detail(r), retryable=r.status_code >= 500)
        return str(r.json()["text"]).strip()


class ChatClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        self.http, self.url = http, base_url.rstrip("/") + "/v1/chat/completions"

    async def stream(
        self, messages: list[dict[str, str]], on_end_of_turn: Callable[[float], None] | None = None, **options: Any
    ) -> AsyncIterator[str]:
        """Text deltas over server-sent events; leaving the loop closes the request,
        which stops generation on the chat service. With `on_end_of_turn`, asks the chat
        service how finished the user's last message reads (if its engine can tell)."""
        body = {"messages": messages, "stream": True, "end_of_turn": on_end_of_turn is not None, **options}
        try:
            async with self.http.stream("POST", self.url, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise UpstreamError("chat", _detail(r), retryable=r.status_code >= 500)
                async for delta in iter_sse_deltas(r.aiter_lines(), on_end_of_turn):
                    yield delta
        except httpx.HTTPError as exc:
            raise UpstreamError("chat", f"unreachable ({type(exc).__name__})") from exc
        except ServiceError as exc:
            raise UpstreamError("chat", exc.message, exc.retryable) from exc


class TtsStream:
    """One WebSocket to the TTS service (one per turn: closing it is the cancel)."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str) -> TtsStream:
        try:
            return cls(await websockets.connect(url, max_size=2**24, open_timeout=5))
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            raise UpstreamError("tts", f"unreachable ({type(exc).__name__})") from exc

    async def speak(self, text: str, voice: str | None, ident: str) -> None:
        msg = {"type": "speak", "text": text, "id": ident}
        if voice:
            msg["voice"] = voice
        try:
            await self.ws.send(json.dumps(msg))
        except websockets.WebSocketException as exc:
            raise UpstreamError("tts", "connection lost") from exc

    async def events(self, idle_timeout: float = 20.0) -> AsyncIterator[np.ndarray | dict[str, Any]]:
        """Audio frames (24 kHz float32) and control messages ({"type":"end"|"error",...})."""
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.recv(), idle_timeout)
            except websockets.ConnectionClosedOK:
                return
            except TimeoutError as exc:
                raise UpstreamError("tts", f"no answer for {idle_timeout:.0f}s") from exc
            except websockets.WebSocketException as exc:
                raise UpstreamError("tts", "connection lost") from exc
            yield f32le_to_float(msg) if isinstance(msg, bytes) else json.loads(msg)

    async def close(self) -> None:
        await self.ws.close()


def _detail(r: httpx.Response) -> str:
    try:
        return f"{r.status_code}: {r.json().get('error', r.text)[:200]}"
    except ValueError:
        return f"{r.status_code}: {r.text[:200]}"
