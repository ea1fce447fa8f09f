"""Fakes of the session's collaborators for unit tests without models or sockets.

They keep the interfaces the session uses (the chat client's `stream`, `Speech`'s
say/events/close, a `Channel`) and record what they were asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from shared.clients import SpeechAudio, SpeechEnd, SpeechEvent, UpstreamError
from shared.protocol import _Out


class FakeChat:
    """Streams `reply` word by word; reports `p_end` as the language model's end-of-turn reading."""

    def __init__(self, reply: str = "Sure. Here is my answer to you.", p_end: float | None = 0.9, delay: float = 0.0) -> None:
        self.reply, self.p_end, self.delay = reply, p_end, delay
        self.prompts: list[list[dict[str, str]]] = []

    async def stream(self, messages: list[dict[str, str]], on_end_of_turn: Callable[[float], None] | None = None,
                     **_: Any) -> AsyncIterator[str]:
        self.prompts.append(messages)
        if on_end_of_turn is not None and self.p_end is not None:
            on_end_of_turn(self.p_end)
        for i, word in enumerate(self.reply.split(" ")):
            await asyncio.sleep(self.delay)
            yield word if i == 0 else " " + word


class FakeSpeech:
    """Each piece said becomes `samples_per_piece` samples of 24 kHz float32 audio, in `chunks` chunks.
    `counting`: each sample's value is its index in the whole speech (where a resend starts shows).
    `breaks_after`: the stream breaks (the TTS service died) once this many pieces were spoken."""

    def __init__(self, samples_per_piece: int = 4800, chunks: int = 2, counting: bool = False,
                 breaks_after: int | None = None) -> None:
        self.samples, self.chunks, self.counting, self.breaks_after = samples_per_piece, chunks, counting, breaks_after
        self._n = self._spoken = 0
        self.said: list[str] = []
        self.closed = False
        self._queue: asyncio.Queue[int] = asyncio.Queue()

    async def say(self, text: str) -> int:
        self.said.append(text)
        await self._queue.put(len(self.said) - 1)
        return len(self.said) - 1

    async def events(self) -> AsyncIterator[SpeechEvent]:
        while not self.closed:
            if self.breaks_after is not None and self._spoken >= self.breaks_after:
                raise UpstreamError("tts", "speech was interrupted", True, "connection lost")
            piece = await self._queue.get()
            for _ in range(self.chunks):
                await asyncio.sleep(0)
                n = self.samples // self.chunks
                if self.counting:
                    pcm = np.arange(self._n, self._n + n, dtype="<f4").tobytes()
                    self._n += n
                else:
                    pcm = b"\x00\x00\x80\x3e" * n  # 0.25 in float32 LE
                yield SpeechAudio(piece, pcm)
            yield SpeechEnd(piece)
            self._spoken += 1

    async def close(self) -> None:
        self.closed = True


class FakeSpeeches:
    """`open_speech` for TurnDeps: hands out FakeSpeech objects and keeps them."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.opened: list[FakeSpeech] = []

    async def __call__(self, voice: str | None) -> FakeSpeech:
        speech = FakeSpeech(**self.options)
        self.opened.append(speech)
        return speech


class RecordingChannel:
    """A client that reads everything at once: the messages and audio, in order."""

    def __init__(self) -> None:
        self.sent: list[_Out | tuple[int, bytes]] = []
        self.closed_with: tuple[int, str] | None = None

    async def send(self, msg: _Out) -> None:
        self.sent.append(msg)

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        self.sent.append((turn_id, pcm))

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def types(self) -> list[str]:
        return ["audio" if isinstance(m, tuple) else str(getattr(m, "type", "?")) for m in self.sent]

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]


class StuckChannel(RecordingChannel):
    """A client that stops reading: every send blocks forever."""

    async def send(self, msg: _Out) -> None:
        await asyncio.Event().wait()

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        await asyncio.Event().wait()


class GoneChannel(RecordingChannel):
    """A client that left: every send raises, as starlette's WebSocket does."""

    async def send(self, msg: _Out) -> None:
        from starlette.websockets import WebSocketDisconnect

        raise WebSocketDisconnect(1001)

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        raise RuntimeError('Cannot call "send" once a close message has been sent.')


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `cond` until it holds or `timeout` s passed: a test waits for what it checks,
    not for a sleep that a loaded machine may outrun."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.01)
    return True
