"""Groq's hosted API through the `groq` SDK (needs GROQ_API_KEY)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from services.chat.engines.base import ChatEngine, ChatMessage, GenerationOptions, tools_body, wire_messages
from shared.config import ChatSettings, GroqSettings
from shared.protocol import ToolCall
from shared.service import MissingDependency, ServiceError

log = logging.getLogger("chat")


class GroqEngine(ChatEngine):
    name = "groq"

    def __init__(self, cfg: ChatSettings) -> None:
        self.cfg = cfg
        self.key = GroqSettings().groq_api_key.get_secret_value()
        self.client: Any = None  # groq.AsyncGroq, imported lazily

    @property
    def available(self) -> bool:
        return bool(self.key)

    async def load(self) -> None:
        if not self.key:
            raise ServiceError(503, "Groq is not configured: set GROQ_API_KEY")
        try:
            from groq import AsyncGroq
        except ImportError as exc:
            raise MissingDependency("groq", "the Groq chat engine") from exc
        self.client = AsyncGroq(api_key=self.key)

    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str | ToolCall]:
        if self.client is None:
            await self.load()
        import groq

        try:
            resp = await self.client.chat.completions.create(
                model=self.cfg.groq_model,
                messages=wire_messages(messages),  # type: ignore[arg-type]
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                stream=True,
                **tools_body(opts),
            )
            calls: dict[int, ToolCall] = {}  # streamed in parts, as OpenAI does: name first, then arguments
            async for chunk in resp:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                if delta.content:
                    yield delta.content
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, ToolCall(id=part.id or f"call_{part.index}", name="_", arguments=""))
                    if part.function is not None:
                        call.name = part.function.name or call.name
                        call.arguments += part.function.arguments or ""
            for call in calls.values():
                yield call
        except groq.APIStatusError as exc:
            log.warning("Groq answered %d: %s", exc.status_code, exc.message)  # its text is for the log only
            raise ServiceError(502, f"Groq answered {exc.status_code}", retryable=exc.status_code >= 500) from exc
        except groq.APIConnectionError as exc:
            log.warning("Groq unreachable: %s", exc)
            raise ServiceError(503, "Groq unreachable", retryable=True) from exc
