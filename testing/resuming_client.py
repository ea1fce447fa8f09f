"""A session client that survives dropped connections, as a mobile client must.

When its socket drops (no close frame: a network, not a hang-up), it reconnects with
backoff, sends its init again with `resume` (the newest token and the number of frames
it received after `call_ready`), and goes on; microphone audio sent while it is away is
held and sent on return. `drop()` cuts the socket the way a network does.

    client = ResumingClient("ws://localhost:8000/ws/abc", {"agentId": "assistant", "userId": "me"})
    await client.start()
    await client.send_audio(pcm_bytes)
    ...
    await client.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from testing.session_client import Event

UNCOUNTED = ("call_ready", "queued")  # not among the numbered frames a resume counts
HELD_MAX = 10 * 16000 * 2  # bytes of microphone audio held while away (10 s)


class ResumingClient:
    def __init__(self, url: str, init: dict[str, Any], headers: dict[str, str] | None = None,
                 give_up_after: float = 30.0) -> None:
        self.url, self.init, self.headers, self.give_up_after = url, init, headers, give_up_after
        self.events: list[Event] = []
        self.audio: dict[int, list[tuple[int, np.ndarray]]] = {}  # turn -> (seq, 24 kHz chunk), as received
        self.received = 0  # numbered frames received, on every connection
        self.connections = 0
        self.token: str | None = None
        self.refused: dict[str, Any] | None = None  # the error that ended a resume, if one was refused
        self.ended = asyncio.Event()  # the session is over (closed by us, the server, or given up)
        self._ws: ClientConnection | None = None
        self._online = asyncio.Event()
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run())

    async def _connect(self) -> None:
        ws = await websockets.connect(self.url, max_size=2**24, additional_headers=self.headers)
        init = dict(self.init)
        if self.token is not None:
            init["resume"] = {"token": self.token, "received": self.received}
        await ws.send(json.dumps(init))
        while True:  # up to call_ready (a `queued` may come first)
            msg = json.loads(await ws.recv())
            self.events.append(Event(time.perf_counter(), msg["type"], msg))
            if msg["type"] == "call_ready":
                break
            if msg["type"] == "error":
                self.refused = msg
                await ws.close()
                raise ConnectionRefusedError(msg["message"])
        self.token = msg.get("resume_token")
        self._ws = ws
        self.connections += 1
        while self._held:  # what the user said while we were away
            chunk = self._held.popleft()
            self._held_bytes -= len(chunk)
            await ws.send(chunk)
        self._online.set()

    async def _run(self) -> None:
        while True:
            assert self._ws is not None
            dropped = await self._read(self._ws)
            self._online.clear()
            if not dropped or self._closing or self.token is None or not await self._reconnect():
                break
        self.ended.set()

    async def _reconnect(self) -> bool:
        since, attempt = time.monotonic(), 0
        while time.monotonic() - since < self.give_up_after:
            await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
            attempt += 1
            try:
                await self._connect()
                return True
            except ConnectionRefusedError:
                return False  # the server will not resume it (expired, unknown): trying again cannot help
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                continue
        return False

    async def _read(self, ws: ClientConnection) -> bool:
        """Read until the socket ends; True if it dropped (no close frame from the server)."""
        try:
            async for raw in ws:
                self.received += 1
                if isinstance(raw, bytes):
                    continue  # these tests ask for JSON audio (its chunks carry turn and seq)
                msg = json.loads(raw)
                self.events.append(Event(time.perf_counter(), msg["type"], msg))
                if msg["type"] == "tts_stream":
                    d = msg["data"]
                    self.audio.setdefault(d["turn_id"], []).append((d["seq"], np.frombuffer(base64.b64decode(d["chunk"]), "<f4")))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd is None
        return False  # closed cleanly

    async def send_audio(self, chunk: bytes) -> None:
        """Send now, or hold while the connection is down (the oldest audio goes first past 10 s)."""
        if self._online.is_set() and self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(chunk)
                return
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        while self._held_bytes > HELD_MAX:
            self._held_bytes -= len(self._held.popleft())

    def drop(self) -> None:
        """Cut the socket the way a network does: no close frame, the server finds out by itself."""
        if self._ws is not None:
            self._online.clear()
            self._ws.transport.abort()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.msg for e in self.events if e.type == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The `count`-th message of a kind (with these field values), waiting up to `timeout` s."""
        async with asyncio.timeout(timeout):
            while True:
                found = [m for m in self.of(kind) if all(m.get(k) == v for k, v in fields.items())]
                if len(found) >= count:
                    return found[count - 1]
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._task, 5.0)
