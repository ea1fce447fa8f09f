"""The STT engine interface: 16 kHz float32 mono in, text out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration: float  # seconds of audio
    dropped_segments: int = 0  # segments rejected as likely hallucinations
    segments: list[Segment] = field(default_factory=list)
    sentence_end: float | None = None  # how sure the engine is that the words end a sentence (None: it cannot say)


class SttEngine(ABC):
    """Blocking engine; the service runs it in a worker thread."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def transcribe(self, audio, language: str | None = None, prompt: str | None = None, temperature: float = 0.0) -> Transcript:  # type: ignore[no-untyped-def]
        """Transcribe 16 kHz mono float32 audio; `prompt` is prior text that conditions the decoder."""
