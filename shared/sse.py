"""OpenAI chat-completion server-sent events, read once for every client of them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from shared.protocol import ToolCall
from shared.service import ServiceError


async def iter_sse_items(lines: AsyncIterator[str], on_end_of_turn: Callable[[float], None] | None = None) -> AsyncIterator[str | ToolCall]:
    """Content deltas, and the tool calls of the reply (each whole, once its stream of
    `tool_calls` deltas is complete), from OpenAI chat-completion server-sent events
    (and our end_of_turn extension)."""
    calls: dict[int, dict[str, Any]] = {}  # index -> id, name, arguments so far
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if event.get("object") == "end_of_turn":
            if on_end_of_turn is not None:
                on_end_of_turn(float(event["probability"]))
            continue
        if "error" in event:
            raise ServiceError(502, f"chat stream error: {event['error']}", retryable=True)
        for choice in event.get("choices", []):
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                yield text
            for part in delta.get("tool_calls") or []:  # the first part names the call, the rest add arguments
                call = calls.setdefault(int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                fn = part.get("function") or {}
                call["id"] = part.get("id") or call["id"]
                call["name"] = fn.get("name") or call["name"]
                call["arguments"] += fn.get("arguments") or ""
    for index in sorted(calls):
        call = calls[index]
        yield ToolCall(id=call["id"] or f"call_{index}", name=call["name"], arguments=call["arguments"] or "{}")


async def iter_sse_deltas(lines: AsyncIterator[str], on_end_of_turn: Callable[[float], None] | None = None) -> AsyncIterator[str]:
    """Content deltas only (a caller that offered no tools)."""
    async for item in iter_sse_items(lines, on_end_of_turn):
        if isinstance(item, str):
            yield item
