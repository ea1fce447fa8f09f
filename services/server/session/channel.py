"""What a session sends to its client, in order, never on the input path.

A `Channel` is the client's transport: the browser WebSocket (JSON, or raw float32
frames for audio) or a phone call (services/server/telephony). The `Outbox` in front
of it is a queue with one writer task, so nothing that decides (audio intake, the
turn-taker, a confirmation releasing held audio) ever waits on a slow client: it
enqueues and goes on. A client that reads nothing for SEND_TIMEOUT is gone, and the
session ends rather than hold a turn (and memory) forever.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from shared.audio import OUT_RATE
from shared.metrics import SESSION_ERRORS
from shared.protocol import AudioChunk, TtsStream, _Out

log = logging.getLogger("server.session")

SEND_TIMEOUT = 10.0  # a client that reads nothing for this long is gone
AUDIO_BACKLOG = 2 * OUT_RATE * 4  # bytes of audio queued (2 s) before a streaming turn waits for the client


class Channel(Protocol):
    """The client's transport. `send_audio` takes 24 kHz float32 little-endian mono."""

    async def send(self, msg: _Out) -> None: ...

    async def send_audio(self, turn_id: int, pcm: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class WebSocketChannel:
    """The session protocol over a WebSocket: JSON messages; audio as `tts_stream` JSON
    (base64) or, with `audioOut: "binary"`, as raw float32 frames."""

    def __init__(self, ws: WebSocket, binary_audio: bool = False) -> None:
        self.ws, self.binary_audio = ws, binary_audio
        self._seq: dict[int, int] = {}

    async def send(self, msg: _Out) -> None:
        await self.ws.send_text(msg.dump())

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        if self.binary_audio:
            await self.ws.send_bytes(pcm)
            return
        seq = self._seq[turn_id] = self._seq.get(turn_id, 0) + 1
        if len(self._seq) > 8:  # only the newest turns can still be speaking
            self._seq.pop(next(iter(self._seq)))
        chunk = AudioChunk(chunk=base64.b64encode(pcm).decode(), sample_rate=OUT_RATE, turn_id=turn_id, seq=seq)
        await self.ws.send_text(TtsStream(data=chunk).dump())

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason=reason)


@dataclass
class Audio:
    """One chunk of a turn's reply. `live()` is asked just before sending: audio of a turn
    cut meanwhile is dropped; `sent` is called once the client has it (the play clock)."""

    turn_id: int
    pcm: bytes
    live: Callable[[], bool]
    sent: Callable[[bytes], None]


@dataclass
class Message:
    msg: _Out
    live: Callable[[], bool] | None = None


class Outbox:
    def __init__(self, channel: Channel, on_gone: Callable[[], None]) -> None:
        self.channel, self._on_gone = channel, on_gone
        self._queue: deque[Audio | Message] = deque()
        self._audio_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write())

    def put(self, msg: _Out, live: Callable[[], bool] | None = None) -> None:
        """Queue a message (never waits). With `live`, it is dropped if that says no at sending time."""
        if not self.closed:
            self._queue.append(Message(msg, live))
            self._wake.set()

    def put_audio(self, item: Audio) -> None:
        """Queue audio without waiting (held audio released at a confirmation)."""
        if not self.closed:
            self._queue.append(item)
            self._audio_bytes += len(item.pcm)
            if self._audio_bytes > AUDIO_BACKLOG:
                self._room.clear()
            self._wake.set()

    async def audio(self, item: Audio) -> None:
        """Queue audio as it streams; waits while the client is more than AUDIO_BACKLOG behind
        (the TTS stream then waits too, instead of piling audio up here)."""
        await self._room.wait()
        self.put_audio(item)

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait until everything queued went out (a last message before a close)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and not self.closed:
                    await asyncio.sleep(0.01)

    async def _write(self) -> None:
        while not self.closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            if isinstance(item, Audio):
                self._audio_bytes -= len(item.pcm)
                if self._audio_bytes <= AUDIO_BACKLOG:
                    self._room.set()
                if item.live() and await self._send(self.channel.send_audio(item.turn_id, item.pcm)):
                    item.sent(item.pcm)
            elif item.live is None or item.live():
                await self._send(self.channel.send(item.msg))

    async def _send(self, sending: object) -> bool:
        try:
            await asyncio.wait_for(sending, SEND_TIMEOUT)  # type: ignore[arg-type]
            return True
        except TimeoutError:
            log.warning("client not reading for %.0fs: closing", SEND_TIMEOUT)
            SESSION_ERRORS.labels(code="slow_client").inc()
            self._gone()
            asyncio.create_task(self._close(1008, "client is not reading"))
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # The client left (or the socket closed under us): nothing more can reach it,
            # and a turn still speaking must end quietly, not crash on its next chunk.
            log.info("client gone while sending (%s): nothing more is sent", type(exc).__name__)
            self._gone()
        return False

    def _gone(self) -> None:
        self.closed = True
        self._queue.clear()
        self._room.set()  # a turn waiting for room goes on (and sends nothing)
        self._on_gone()

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.close(code, reason), 1.0)

    async def close(self, code: int | None = None, reason: str = "") -> None:
        """Stop writing; with `code`, send what is queued first, then close the transport."""
        if code is not None and not self.closed:
            await self.drain()
        self.closed = True
        self._room.set()
        self._wake.set()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if code is not None:
            await self._close(code, reason)
