"""The STT engine interface: 16 kHz float32 mono in, text out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration: float  # seconds of audio
    dropped_segments: int = 0  # segments rejected as likely hallucinations


class SttEngine(ABC):
    """Blocking engine; the service runs it in a worker thread."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def transcribe(self, audio, language: str | None = None) -> Transcript:  # type: ignore[no-untyped-def]
        """Transcribe 16 kHz mono float32 audio."""
