"""Any OpenAI-compatible server (`vllm serve`, llama.cpp server, a hosted API), over SSE."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx

from services.chat.engines.base import ChatEngine, ChatMessage, GenerationOptions, tools_body, wire_messages
from shared.config import ChatSettings
from shared.protocol import ToolCall
from shared.service import ServiceError
from shared.sse import iter_sse_items

log = logging.getLogger("chat")


class OpenAICompatEngine(ChatEngine):
    name = "openai"

    def __init__(self, cfg: ChatSettings) -> None:
        self.cfg = cfg
        key = cfg.openai_api_key.get_secret_value()
        self.client = httpx.AsyncClient(
            base_url=cfg.openai_base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(60.0, connect=5.0),
        )

    async def load(self) -> None:
        try:
            r = await self.client.get("/models")
        except httpx.HTTPError as exc:
            raise RuntimeError(f"OpenAI-compatible server at {self.cfg.openai_base_url} unreachable: {exc}") from exc
        if not self.cfg.openai_model and r.status_code == 200:
            self.cfg.openai_model = r.json()["data"][0]["id"]

    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str | ToolCall]:
        body = {
            "model": self.cfg.openai_model,
            "messages": wire_messages(messages),
            "max_tokens": opts.max_tokens,
            "temperature": opts.temperature,
            "stream": True,
            **tools_body(opts),  # vLLM (--enable-auto-tool-choice), llama.cpp server (--jinja), hosted APIs
        }
        if opts.stop:
            body["stop"] = list(opts.stop)
        async with self.client.stream("POST", "/chat/completions", json=body) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode(errors="replace")[:300]
                log.warning("upstream chat server answered %d: %s", r.status_code, detail)  # the body is for the log only
                raise ServiceError(502, f"upstream chat server answered {r.status_code}", retryable=r.status_code >= 500)
            async for item in iter_sse_items(r.aiter_lines()):
                yield item
