"""The chat engine interface: OpenAI-style messages in, streamed text deltas out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.protocol import Tool, ToolCall, ToolCallEntry, ToolChoice
from shared.service import ServiceError


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(None, max_length=8000)
    tool_calls: list[ToolCallEntry] | None = Field(None, max_length=8, description="assistant: the tools it called (OpenAI format)")
    tool_call_id: str | None = Field(None, max_length=128, description="tool: the call this result answers")

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant message that calls tools may have none)")
        return self

    @property
    def text(self) -> str:
        return self.content or ""


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()  # offered to the model (OpenAI function format)
    tool_choice: ToolChoice | None = None  # None: "auto" when tools are offered


def tools_body(opts: GenerationOptions) -> dict[str, Any]:
    """The `tools` and `tool_choice` of an OpenAI request, for engines that pass them on."""
    if not opts.tools:
        return {}
    body: dict[str, Any] = {"tools": [t.model_dump() for t in opts.tools]}
    if opts.tool_choice is not None:
        body["tool_choice"] = opts.tool_choice if isinstance(opts.tool_choice, str) else opts.tool_choice.model_dump()
    return body


def wire_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in messages]


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
    ) -> AsyncIterator[str | EndOfTurn | ToolCall]:
        """Like stream(), optionally preceded by an EndOfTurn; engines that can read it
        while prefilling the reply override this to do both in one pass."""
        if end_of_turn and (p := await self.end_of_turn(messages)) is not None:
            yield EndOfTurn(p)
        async for delta in self.stream(messages, opts):
            yield delta

    @abstractmethod
    def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str | ToolCall]:
        """Text deltas of the assistant's reply, and the tools it calls (when `opts.tools`
        offered some). Closing the iterator stops generation."""
