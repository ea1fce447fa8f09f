"""vLLM in process, on a GPU (package `vllm` from requirements-gpu.txt). For a separate
`vllm serve` cluster use the `openai` engine instead."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from services.chat.engines.base import ChatEngine, ChatMessage, GenerationOptions, wire_messages
from shared.config import ChatSettings
from shared.service import MissingDependency


class VllmEngine(ChatEngine):
    name = "vllm"

    def __init__(self, cfg: ChatSettings) -> None:
        self.cfg = cfg
        self.engine: Any = None  # vllm.AsyncLLMEngine, imported lazily
        self.tokenizer: Any = None

    async def load(self) -> None:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as exc:
            raise MissingDependency("vllm", "the vLLM chat engine") from exc
        if not self.cfg.vllm_model:
            raise RuntimeError("CHAT_VLLM_MODEL must name a local model directory")
        args = AsyncEngineArgs(model=self.cfg.vllm_model, enable_prefix_caching=True, gpu_memory_utilization=0.5)
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.tokenizer = await self.engine.get_tokenizer()

    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str]:
        from vllm import SamplingParams

        assert self.engine is not None and self.tokenizer is not None
        # Tools reach the model through its chat template; their calls come back as its text (a
        # `vllm serve --enable-auto-tool-choice` behind the `openai` engine parses them into tool_calls).
        tools = [t.model_dump() for t in opts.tools] or None
        prompt = self.tokenizer.apply_chat_template(wire_messages(messages), tools=tools, tokenize=False, add_generation_prompt=True)
        params = SamplingParams(max_tokens=opts.max_tokens, temperature=opts.temperature, stop=list(opts.stop) or None)
        request_id = uuid.uuid4().hex
        sent = 0
        try:
            async for out in self.engine.generate(prompt, params, request_id):
                text = out.outputs[0].text
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
        finally:
            await self.engine.abort(request_id)
