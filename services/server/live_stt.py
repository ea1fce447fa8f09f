"""A session's live transcription: the user's audio streams to STT while they speak.

One WebSocket to `WS :8001/transcribe/stream` per session, reused utterance after
utterance. Partial transcripts go to `on_partial` (the session shows them as live
captions); at a pause `transcript()` asks for the text so far without ending the
utterance (only the undecoded tail is left to decode), so the speaker may go on.
If the stream breaks, the utterance falls back to the batch endpoint (`None` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from shared.clients import UpstreamError, Words
from shared.protocol import SttPartial
from shared.replicas import Replicas
from shared.stt_stream_client import SttStreamClient

log = logging.getLogger("server.live_stt")

RECONNECT_AFTER = 5.0  # seconds before a broken stream is tried again


def stream_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + "/transcribe/stream"


class LiveTranscriber:
    def __init__(self, replicas: Replicas, language: str, on_partial: Callable[[SttPartial], Awaitable[None]]) -> None:
        self.replicas, self.language, self.on_partial = replicas, language, on_partial
        self._client: SttStreamClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self._broken = False  # this utterance lost audio: only the batch path can be trusted
        self._retry_at = 0.0
        self._streamed = 0  # samples of this utterance sent

    @property
    def streamed(self) -> int:
        return self._streamed

    async def feed(self, audio: np.ndarray) -> None:
        """The utterance's next samples (in order, none twice)."""
        if audio.size == 0:
            return
        if self._broken:
            self._streamed += len(audio)
            return
        try:
            client = await self._connected()
            await client.send_audio(audio)
        except UpstreamError as exc:
            self._fail(exc)
        self._streamed += len(audio)

    async def transcript(self, timeout: float = 5.0) -> Words | None:
        """The words of the utterance so far (it goes on), or None: use the batch path."""
        if self._broken or self._client is None or self._streamed == 0:
            return None
        try:
            final = await self._client.flush(timeout=timeout, keep=True)
        except UpstreamError as exc:
            self._fail(exc)
            return None
        return Words(final.text, final.sentence_end)

    async def end_utterance(self) -> None:
        """The utterance is over: the next audio starts a new one."""
        self._streamed, self._broken = 0, False
        if self._client is not None:
            try:
                await self._client.reset()
            except UpstreamError as exc:
                self._fail(exc)
                self._broken = False

    def _fail(self, exc: UpstreamError) -> None:
        log.warning("live transcription lost (%s); this utterance goes to batch STT", exc)
        self._broken = True
        self._retry_at = asyncio.get_running_loop().time() + RECONNECT_AFTER
        client, self._client = self._client, None
        if client is not None:
            asyncio.create_task(client.close())

    async def _connected(self) -> SttStreamClient:
        if self._client is not None:
            return self._client
        if self._streamed:  # audio went nowhere: this utterance cannot be streamed any more
            raise UpstreamError("stt", "stream not open mid-utterance")
        if asyncio.get_running_loop().time() < self._retry_at:
            raise UpstreamError("stt", "stream recently failed")
        replica = self.replicas.pick()
        client = SttStreamClient(stream_url(replica.http_base), language=self.language)
        await client.connect()
        self._client = client
        if self._reader is not None:
            self._reader.cancel()
        self._reader = asyncio.create_task(self._read(client))
        return client

    async def _read(self, client: SttStreamClient) -> None:
        with contextlib.suppress(UpstreamError):
            async for partial in client.partials():
                await self.on_partial(partial)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.close(), 2.0)
