"""OpenAI chat-completion server-sent events, read once for every client of them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from shared.service import ServiceError


async def iter_sse_deltas(lines: AsyncIterator[str], on_end_of_turn: Callable[[float], None] | None = None) -> AsyncIterator[str]:
    """Content deltas from OpenAI chat-completion server-sent events (and our end_of_turn extension)."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if event.get("object") == "end_of_turn":
            if on_end_of_turn is not None:
                on_end_of_turn(float(event["probability"]))
            continue
        if "error" in event:
            raise ServiceError(502, f"chat stream error: {event['error']}", retryable=True)
        for choice in event.get("choices", []):
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield text
