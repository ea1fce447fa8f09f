"""Streaming helpers shared by the API families: errors before the first byte become HTTP
errors, audio is encoded as it arrives, and a failure after the headers ends the body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from services.server.gateway.encode import Encoder
from services.server.gateway.errors import to_gateway_error


async def primed(gen: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pull the first item now, so an upstream failure is an HTTP error, not a broken stream."""
    try:
        first = await anext(gen)
    except StopAsyncIteration:
        return _empty()

    async def chained() -> AsyncIterator[Any]:
        yield first
        async for x in gen:
            yield x

    return chained()


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # an async generator that yields nothing


async def encoded(audio: AsyncIterator[np.ndarray], fmt: str) -> AsyncIterator[bytes]:
    """Bytes of `fmt` as each chunk of audio arrives (encoding off the event loop)."""
    enc = Encoder(fmt)
    async for chunk in audio:
        if out := await asyncio.to_thread(enc.push, chunk):
            yield out
    if out := await asyncio.to_thread(enc.finish):
        yield out


async def guard_bytes(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the first bytes can only end the body early; it is logged."""
    try:
        async for b in chunks:
            yield b
    except Exception as exc:  # noqa: BLE001
        to_gateway_error(exc)
