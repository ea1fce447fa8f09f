"""The TTS engine interface. A provider yields float32 audio at its own rate;
the base class resamples to 24 kHz and cuts chunks of at most `chunk_ms`, once for all."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import numpy as np

from shared.audio import OUT_RATE, StreamResampler, split_chunks


class TtsEngine(ABC):
    sample_rate: int = OUT_RATE  # the provider's native rate, set by load()

    async def load(self) -> None:
        """Load weights or check credentials; warm up."""

    def rate_for(self, voice: str | None) -> int:
        """The native sample rate of what synthesize() yields for this voice."""
        return self.sample_rate

    @abstractmethod
    def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        """Provider hook: float32 mono audio at `rate_for(voice)`, in any piece sizes."""

    async def stream(self, text: str, voice: str | None, chunk_ms: int) -> AsyncIterator[np.ndarray]:
        """24 kHz float32 chunks of at most chunk_ms, streamed as the provider produces them."""
        rs = StreamResampler(await asyncio.to_thread(self.rate_for, voice), OUT_RATE)  # may load the voice
        async for piece in self.synthesize(text, voice):
            for chunk in split_chunks(rs.push(piece), OUT_RATE, chunk_ms):
                yield chunk
        tail = rs.push(np.zeros(0, np.float32), last=True)
        for chunk in split_chunks(tail, OUT_RATE, chunk_ms):
            yield chunk
