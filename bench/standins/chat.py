"""Chat stand-in: `POST /v1/chat/completions` with the same SSE stream as services/chat/app.py."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from shared.service import create_service

log = logging.getLogger("standin.chat")
REPLY = "Sure, that sounds like a good plan. Tell me a little more about it."
END_OF_TURN_PROBABILITY = 0.9
MODEL = "standin"


class Message(BaseModel):
    role: str
    content: str


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not use (temperature, stop, ...)
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    max_tokens: int = Field(256, ge=1)
    end_of_turn: bool = False


def tokens(max_tokens: int) -> tuple[list[str], str]:
    """The reply as word-sized deltas (as a tokenizer would stream them) and the finish reason."""
    words = REPLY.split(" ")
    deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return deltas[:max_tokens], "length" if max_tokens < len(deltas) else "stop"


async def _nothing() -> None:
    return None


def create_app() -> FastAPI:
    app, _ = create_service("chat", _nothing, log, "Chat stand-in (bench/standins).")

    @app.post("/v1/chat/completions")
    async def completions(req: Request):  # type: ignore[no-untyped-def]
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time()), req.model or MODEL
        deltas, finish = tokens(req.max_tokens)
        if not req.stream:
            return {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(deltas)}, "finish_reason": finish}],
            }

        def event(delta: dict, finish_reason: str | None = None) -> str:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            return f"data: {json.dumps(chunk)}\n\n"

        async def sse() -> AsyncIterator[str]:
            yield event({"role": "assistant"})
            if req.end_of_turn:
                yield f"data: {json.dumps({'object': 'end_of_turn', 'probability': END_OF_TURN_PROBABILITY})}\n\n"
            for d in deltas:
                yield event({"content": d})
            yield event({}, finish)
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
