"""The chat engine interface: OpenAI-style messages in, streamed text deltas out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from shared.service import ServiceError


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=8000)


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()


class ContextOverflow(ServiceError):
    """The prompt plus the longest reply asked for does not fit the model's context (a 400)."""

    def __init__(self, prompt_tokens: int, context_tokens: int, reply_tokens: int) -> None:
        super().__init__(
            400, f"prompt is {prompt_tokens} tokens; this model's context is {context_tokens} "
            f"(reply needs up to {reply_tokens} more)",
            prompt_tokens=prompt_tokens, context_tokens=context_tokens, max_tokens=reply_tokens,
        )


@dataclass(frozen=True)
class EndOfTurn:
    """How finished the last user message reads (0..1); comes before the first text delta."""

    probability: float


class ChatEngine(ABC):
    name: str = "chat"
    slots: int = 0  # sequences generated at once; 0: no local limit (remote engines)

    def queued(self) -> int:
        """Requests waiting for a slot."""
        return 0

    def check(self, messages: list[ChatMessage], opts: GenerationOptions) -> None:
        """Raise a 4xx ServiceError if the request cannot be served (e.g. it overflows the context)."""

    async def load(self) -> None:
        """Load weights or check credentials; warm up."""

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """Probability that the last user message is a finished turn; None if not supported."""
        return None

    async def generate(
        self, messages: list[ChatMessage], opts: GenerationOptions, end_of_turn: bool = False
    ) -> AsyncIterator[str | EndOfTurn]:
        """Like stream(), optionally preceded by an EndOfTurn; engines that can read it
        while prefilling the reply override this to do both in one pass."""
        if end_of_turn and (p := await self.end_of_turn(messages)) is not None:
            yield EndOfTurn(p)
        async for delta in self.stream(messages, opts):
            yield delta

    @abstractmethod
    def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply. Closing the iterator stops generation."""
