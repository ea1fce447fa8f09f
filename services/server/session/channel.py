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
from typing import TYPE_CHECKING, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from shared.audio import OUT_RATE
from shared.metrics import SESSION_ERRORS
from shared.protocol import AudioChunk, TtsStream, _Out

if TYPE_CHECKING:
    from services.server.session.resume import ReplayLog

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
    (base64) or, with `audioOut: "binary"`, as raw float32 frames.

    With a `ReplayLog`, every frame sent after `call_ready` is numbered and kept for a
    while, so that a client that reconnects (`rebind`) gets the ones it missed."""

    def __init__(self, ws: WebSocket, binary_audio: bool = False, replay: ReplayLog | None = None) -> None:
        self.ws, self.binary_audio, self.replay = ws, binary_audio, replay
        self._seq: dict[int, int] = {}

    async def greet(self, msg: _Out) -> None:
        """`call_ready` (and `queued`): outside the numbered frames."""
        await self.ws.send_text(msg.dump())

    async def send(self, msg: _Out) -> None:
        await self._frame(msg.dump())

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        if self.binary_audio:
            await self._frame(pcm)
            return
        seq = self._seq.get(turn_id, 0) + 1  # counted once sent: a chunk sent again after a drop keeps its number
        chunk = AudioChunk(chunk=base64.b64encode(pcm).decode(), sample_rate=OUT_RATE, turn_id=turn_id, seq=seq)
        await self._frame(TtsStream(data=chunk).dump())
        self._seq[turn_id] = seq
        if len(self._seq) > 8:  # only the newest turns can still be speaking
            self._seq.pop(next(iter(self._seq)))

    async def _frame(self, frame: str | bytes) -> None:
        await _put(self.ws, frame)
        if self.replay is not None:
            self.replay.add(frame)

    async def rebind(self, ws: WebSocket, ready: _Out, received: int) -> int:
        """The client is back on a new socket: `ready`, then the frames after the first
        `received`. Returns how many it missed that are no longer kept."""
        assert self.replay is not None
        self.ws = ws
        await self.greet(ready)
        frames, missing = self.replay.since(received)
        for frame in frames:
            await _put(ws, frame)
        log.info("resumed: %d frames sent again%s", len(frames), f", {missing} no longer kept" if missing else "")
        return missing

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason=reason)


async def _put(ws: WebSocket, frame: str | bytes) -> None:
    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_text(frame))


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
    msg: _Out | Callable[[], _Out]  # a callable is made at sending time (a turn's timings include its last send)
    live: Callable[[], bool] | None = None
    turn_id: int | None = None  # the turn it belongs to (a paused turn takes its unsent output back)


class Outbox:
    """`hold_on_drop`: when the connection drops, keep what is queued (the session waits
    for its client to resume) instead of discarding it."""

    def __init__(self, channel: Channel, on_gone: Callable[[], None], hold_on_drop: bool = False) -> None:
        self.channel, self._on_gone, self.hold_on_drop = channel, on_gone, hold_on_drop
        self._queue: deque[Audio | Message] = deque()
        self._audio_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._online = asyncio.Event()  # cleared while the connection is down (held output waits)
        self._online.set()
        self.closed = False
        self._writer: asyncio.Task[None] | None = None
        self._sending: Audio | Message | None = None  # the item being written right now

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write())

    def put(self, msg: _Out | Callable[[], _Out], live: Callable[[], bool] | None = None, turn_id: int | None = None) -> None:
        """Queue a message (never waits), or what makes it when its turn to go comes. With
        `live`, it is dropped if that says no at sending time."""
        if not self.closed:
            self._queue.append(Message(msg, live, turn_id))
            self._wake.set()

    def put_audio(self, item: Audio) -> None:
        """Queue audio without waiting (held audio released at a confirmation)."""
        if not self.closed:
            self._queue.append(item)
            self._audio_bytes += len(item.pcm)
            if self._audio_bytes > AUDIO_BACKLOG:
                self._room.clear()
            self._wake.set()

    async def room(self) -> None:
        """Wait while the client is more than AUDIO_BACKLOG behind (a streaming turn then waits
        too, instead of piling audio up here)."""
        await self._room.wait()

    def take(self, turn_id: int) -> list[Audio | Message]:
        """Take a turn's queued output back, in order (not what is being written right now)."""
        mine = [i for i in self._queue if i.turn_id == turn_id and i is not self._sending]
        if mine:
            self._queue = deque(i for i in self._queue if i.turn_id != turn_id or i is self._sending)
            self._audio_bytes -= sum(len(i.pcm) for i in mine if isinstance(i, Audio))
            if self._audio_bytes <= AUDIO_BACKLOG:
                self._room.set()
        return mine

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait until everything queued went out (a last message before a close)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and not self.closed and self._online.is_set():
                    await asyncio.sleep(0.01)

    def go_offline(self) -> None:
        """The connection is down: output waits in the queue (not a turn's pause: that is the turn-taker's)."""
        self._online.clear()

    def go_online(self) -> None:
        self._online.set()

    async def _write(self) -> None:
        while not self.closed:
            self._sending = None
            await self._online.wait()
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._sending = self._queue[0]  # taken off once it went out: a drop mid-send keeps it for a resume
            if isinstance(item, Audio):
                live = item.live()
                if live and not await self._send(self.channel.send_audio(item.turn_id, item.pcm)):
                    continue
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
                    self._audio_bytes -= len(item.pcm)
                    if self._audio_bytes <= AUDIO_BACKLOG:
                        self._room.set()
                    if live:
                        item.sent(item.pcm)
            else:
                msg = item.msg() if callable(item.msg) else item.msg
                if (item.live is None or item.live()) and not await self._send(self.channel.send(msg)):
                    continue
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()

    async def _send(self, sending: object) -> bool:
        try:
            await asyncio.wait_for(sending, SEND_TIMEOUT)  # type: ignore[arg-type]
            return True
        except TimeoutError:
            log.warning("client not reading for %.0fs: closing", SEND_TIMEOUT)
            SESSION_ERRORS.labels(code="slow_client").inc()
            self._dropped()
            asyncio.create_task(self._close(1008, "client is not reading"))
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # The client left (or the socket closed under us): nothing more can reach it now,
            # and a turn still speaking must end quietly, not crash on its next chunk.
            log.info("client gone while sending (%s): %s", type(exc).__name__,
                     "output waits for a resume" if self.hold_on_drop else "nothing more is sent")
            self._dropped()
        return False

    def _dropped(self) -> None:
        if self.hold_on_drop:
            self.go_offline()
            self._on_gone()
        else:
            self._gone()

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
