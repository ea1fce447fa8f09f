"""The TTS engine interface. A provider yields float32 audio at its own rate;
the base class resamples to 24 kHz and cuts chunks of at most `chunk_ms`, once for all.

Voices: an engine lists the voices it offers (`voices()`); the service's catalog
resolves a client's voice id to one of them before the engine sees it, so an engine
only ever receives ids it listed itself (or cloned), never client-chosen paths.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import numpy as np

from shared.audio import OUT_RATE, StreamResampler, split_chunks
from shared.protocol import VoiceInfo
from shared.service import ServiceError


class TtsEngine(ABC):
    name: str = "tts"
    sample_rate: int = OUT_RATE  # the provider's native rate, set by load()
    can_clone: bool = False  # add_voice() works (speaker conditioning from a reference recording)
    local: bool = True  # synthesizes on this machine (a cloud provider's engine sets False: not gated)

    async def load(self) -> None:
        """Load weights or check credentials; warm up."""

    def voices(self) -> list[VoiceInfo]:
        """The built-in voices (configured by the operator), first one the default unless `default_voice` says otherwise."""
        return []

    @property
    def default_voice(self) -> str | None:
        v = self.voices()
        return v[0].id if v else None

    def add_voice(self, voice_id: str, audio16k: np.ndarray, transcript: str | None) -> None:
        """Blocking (run in a thread): compute and cache the speaker conditioning for a cloned voice."""
        raise ServiceError(501, f"the {self.name} engine cannot clone voices; run TTS_ENGINE=xtts for POST /v1/voices")

    def remove_voice(self, voice_id: str) -> None:
        """Forget a cloned voice (memory and disk)."""

    def rate_for(self, voice: str | None) -> int:
        """The native sample rate of what synthesize() yields for this voice."""
        return self.sample_rate

    @abstractmethod
    def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        """Provider hook: float32 mono audio at `rate_for(voice)`, in any piece sizes.
        `voice` is an id from this engine's catalog entries, or None for its default."""

    async def stream(self, text: str, voice: str | None, chunk_ms: int) -> AsyncIterator[np.ndarray]:
        """24 kHz float32 chunks of at most chunk_ms, streamed as the provider produces them."""
        text = speakable(text)
        rs = StreamResampler(await asyncio.to_thread(self.rate_for, voice), OUT_RATE)  # may load the voice
        async for piece in self.synthesize(text, voice):
            for chunk in split_chunks(rs.push(piece), OUT_RATE, chunk_ms):
                yield chunk
        tail = rs.push(np.zeros(0, np.float32), last=True)
        for chunk in split_chunks(tail, OUT_RATE, chunk_ms):
            yield chunk


def speakable(text: str) -> str:
    """The text without control characters (a NUL crashes espeak's phonemizer), or a 400."""
    clean = "".join(c if c.isprintable() else " " for c in text).strip()
    if not any(c.isalnum() for c in clean):
        raise ServiceError(400, "nothing to speak: the text has no letters or digits")
    return clean
