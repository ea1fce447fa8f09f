"""Async client for the STT service's streaming endpoint (WS :8001/transcribe/stream).

    async with SttStreamClient("ws://127.0.0.1:8001/transcribe/stream") as stt:
        await stt.send_audio(chunk)            # float32 16 kHz, any length, as it arrives
        async for p in stt.partials(): ...     # SttPartial: committed (never changes), tail, text
        final = await stt.flush()              # SttFinal of the utterance; the next one starts

Partials are kept in a small queue (the oldest dropped when nobody reads them): a
consumer that only wants the final can ignore them. A closed connection is
raised as `UpstreamError` by the next call; the service's `error` messages (a bad
message, audio over its limit) do not end the stream and are kept in `last_error`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import TracebackType

import numpy as np
import websockets

from shared.aio import cancel_and_wait
from shared.audio import as_pcm16
from shared.clients import UpstreamError
from shared.protocol import SttFinal, SttPartial


class SttStreamClient:
    def __init__(self, url: str, language: str | None = None, prompt: str | None = None,
                 headers: dict[str, str] | None = None, max_partials: int = 32) -> None:
        self.url, self.language, self.prompt, self.headers = url, language, prompt, headers
        self._ws: websockets.ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._partials: asyncio.Queue[SttPartial | None] = asyncio.Queue(max_partials)
        self._finals: asyncio.Queue[SttFinal] = asyncio.Queue()
        self._error: UpstreamError | None = None  # the connection ended: raised by the next call
        self.last_error: str | None = None  # the service's latest `error` message

    async def connect(self) -> SttStreamClient:
        if self.headers is None:
            try:
                from shared.security import service_headers

                self.headers = service_headers()
            except ImportError:
                self.headers = {}
        try:
            self._ws = await websockets.connect(self.url, additional_headers=self.headers, open_timeout=10)
        except (OSError, websockets.WebSocketException) as exc:
            raise UpstreamError("stt", f"stream unreachable ({type(exc).__name__})") from exc
        if self.language or self.prompt:
            await self._send_json({"type": "config", "language": self.language, "prompt": self.prompt})
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aenter__(self) -> SttStreamClient:
        return await self.connect()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            if self._reader is not None:
                await cancel_and_wait(self._reader, "the STT stream reader")
        finally:  # even when our caller's timeout cancels us meanwhile: the socket is not left open
            if self._ws is not None:
                await self._ws.close()

    async def send_audio(self, audio: np.ndarray) -> None:
        """16 kHz mono samples (int16 as received, or float32), sent as int16 LE PCM."""
        self._raise()
        assert self._ws is not None, "connect() first"
        try:
            await self._ws.send(as_pcm16(audio).tobytes())
        except websockets.ConnectionClosed as exc:
            raise UpstreamError("stt", "stream closed") from exc

    async def partials(self) -> AsyncIterator[SttPartial]:
        """Partials as they come, until the connection ends."""
        while (p := await self._partials.get()) is not None:
            yield p
        self._raise()

    async def flush(self, timeout: float = 10.0, keep: bool = False) -> SttFinal:
        """End the utterance; the final transcript (its `.text`). With `keep`: the text so
        far, and the utterance goes on."""
        self._raise()
        await self._send_json({"type": "flush", "keep": keep or None})
        get = asyncio.ensure_future(self._finals.get())
        done, _ = await asyncio.wait({get, self._reader} if self._reader else {get}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        self._raise()
        raise UpstreamError("stt", "no final transcript in time" if not done else "stream closed")

    async def reset(self) -> None:
        """Drop the audio of the current utterance."""
        await self._send_json({"type": "reset"})

    async def _send_json(self, msg: dict[str, object]) -> None:
        assert self._ws is not None, "connect() first"
        try:
            await self._ws.send(json.dumps({k: v for k, v in msg.items() if v is not None}))
        except websockets.ConnectionClosed as exc:
            raise UpstreamError("stt", "stream closed") from exc

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if msg.get("type") == "partial":
                    if self._partials.full():
                        self._partials.get_nowait()  # nobody is reading: keep the newest
                    self._partials.put_nowait(SttPartial.model_validate(msg))
                elif msg.get("type") == "final":
                    self._finals.put_nowait(SttFinal.model_validate(msg))
                elif msg.get("type") == "error":
                    self.last_error = str(msg.get("message"))  # the connection goes on (e.g. audio over the limit)
        except websockets.ConnectionClosed:
            self._error = self._error or UpstreamError("stt", "stream closed")
        finally:
            if self._partials.full():
                self._partials.get_nowait()
            self._partials.put_nowait(None)  # ends partials()
