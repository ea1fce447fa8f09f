"""The chat engine interface: OpenAI-style messages in, streamed text deltas out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=8000)


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()


class ChatEngine(ABC):
    name: str = "chat"

    async def load(self) -> None:
        """Load weights or check credentials; warm up."""

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """Probability that the last user message is a finished turn; None if not supported."""
        return None

    @abstractmethod
    def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply. Closing the iterator stops generation."""
