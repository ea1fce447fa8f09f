"""Chat service (:8002): OpenAI-compatible /v1/chat/completions (SSE when streaming),
plus /chat with a bounded per-session history and /chat/groq."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from services.chat.engines.base import ChatEngine, ChatMessage, EndOfTurn, GenerationOptions
from services.chat.engines.groq import GroqEngine
from shared.config import ChatSettings
from shared.logs import setup_logging, user_text
from shared.protocol import StopSequences, Tool, ToolCall, ToolChoice
from shared.service import ServiceError, create_service, require_ready

log = setup_logging("chat")
cfg = ChatSettings()


def make_engine(cfg: ChatSettings) -> ChatEngine:
    """Engines are imported lazily: GPU and cloud ones need packages the default path lacks."""
    if cfg.engine == "llama_cpp":
        from services.chat.engines.llama_cpp import LlamaCppEngine

        return LlamaCppEngine(cfg)
    if cfg.engine == "openai":
        from services.chat.engines.openai_compat import OpenAICompatEngine

        return OpenAICompatEngine(cfg)
    if cfg.engine == "vllm":
        from services.chat.engines.vllm import VllmEngine

        return VllmEngine(cfg)
    return GroqEngine(cfg)


engine = make_engine(cfg)
groq = engine if isinstance(engine, GroqEngine) else GroqEngine(cfg)


async def _load() -> None:
    if cfg.nice:
        # Token generation keeps both cores busy; a lower priority lets the short STT and
        # TTS bursts on the latency path preempt it instead of queueing behind it.
        os.nice(cfg.nice)
    await engine.load()


app, state = create_service("chat", _load, log, "Chat completions for the voice agent.")
_active = 0  # requests being served (generating or waiting for a slot)


@app.get("/load", summary="In-flight and queued requests, and how many this replica decodes at once")
async def load() -> dict[str, int]:
    queued = engine.queued()
    return {"in_flight": max(_active - queued, 0), "queued": queued, "slots": engine.slots}




class CompletionRequest(BaseModel):
    model: str | None = Field(None, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: StopSequences = None
    end_of_turn: bool = Field(False, description="extension: first SSE event is {'object': 'end_of_turn', 'probability'} "
                              "(how finished the last user message reads), when the engine supports it")
    tools: list[Tool] | None = Field(None, max_length=32, description="functions the model may call (OpenAI format)")
    tool_choice: ToolChoice | None = None


def _options(req: CompletionRequest) -> GenerationOptions:
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    return GenerationOptions(
        max_tokens=min(req.max_tokens or cfg.max_tokens, cfg.max_tokens_limit),  # one request cannot hold a slot for minutes
        temperature=cfg.temperature if req.temperature is None else req.temperature,
        stop=tuple(stop),
        tools=tuple(req.tools or ()),
        tool_choice=req.tool_choice,
    )


async def _collect(eng: ChatEngine, messages: list[ChatMessage], opts: GenerationOptions) -> tuple[str, list[ToolCall]]:
    """The whole reply: its text, and the tools it calls."""
    global _active
    eng.check(messages, opts)
    t0 = time.perf_counter()
    _active += 1
    parts: list[str] = []
    calls: list[ToolCall] = []
    try:
        async for item in eng.stream(messages, opts):
            (calls if isinstance(item, ToolCall) else parts).append(item)  # type: ignore[arg-type]
    finally:
        _active -= 1
    text = "".join(parts).strip()
    log.info("%s reply in %.0f ms: %s%s", eng.name, (time.perf_counter() - t0) * 1000, user_text(text),
             "".join(f" [calls {c.name}]" for c in calls))
    return text, calls


@app.post("/v1/chat/completions", summary="OpenAI-compatible chat completion (stream: true gives SSE)")
async def completions(req: CompletionRequest):  # type: ignore[no-untyped-def]
    require_ready(state)
    opts, cid, created = _options(req), f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())
    model = req.model or engine.name
    if not req.stream:
        text, calls = await _collect(engine, req.messages, opts)
        message: dict = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = [c.wire() for c in calls]
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        }

    def event(delta: dict, finish: str | None = None) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    engine.check(req.messages, opts)  # a context overflow is a 400 before any byte is streamed

    async def sse() -> AsyncIterator[str]:
        global _active
        t0, first, n, calls = time.perf_counter(), None, 0, 0
        yield event({"role": "assistant"})
        _active += 1
        try:
            async for item in engine.generate(req.messages, opts, end_of_turn=req.end_of_turn):
                if isinstance(item, EndOfTurn):
                    yield f"data: {json.dumps({'object': 'end_of_turn', 'probability': round(item.probability, 4)})}\n\n"
                    continue
                if isinstance(item, ToolCall):  # whole, in one delta (OpenAI streams it in parts; both parse the same)
                    yield event({"tool_calls": [item.wire(calls)]})
                    calls += 1
                    continue
                if first is None:
                    first = time.perf_counter() - t0
                n += 1
                yield event({"content": item})
        except Exception as exc:  # noqa: BLE001 - headers are gone: an error event in-band, then a proper end
            if not isinstance(exc, ServiceError):
                log.exception("chat stream failed")
                exc = ServiceError(500, f"internal error: {type(exc).__name__}", retryable=True)
            body = {"error": {"message": exc.message, "retryable": exc.retryable}}
            yield f"event: error\ndata: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            return
        finally:
            _active -= 1
        yield event({}, "tool_calls" if calls else "stop")
        yield "data: [DONE]\n\n"
        log.info("streamed %d deltas: first %.0f ms, total %.0f ms", n, (first or 0) * 1000, (time.perf_counter() - t0) * 1000)

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class SimpleChat(BaseModel):
    text: str = Field(min_length=1, max_length=4000)
    session_id: str = Field("default", max_length=128)
    personality: str | None = Field(None, max_length=2000, description="system prompt")


class _Histories:
    """Per-session history for /chat: at most `turns` exchanges, at most `sessions` sessions (LRU)."""

    def __init__(self, turns: int, sessions: int) -> None:
        self.turns, self.sessions = turns, sessions
        self._data: OrderedDict[str, deque[ChatMessage]] = OrderedDict()

    def get(self, sid: str) -> deque[ChatMessage]:
        if sid not in self._data:
            self._data[sid] = deque(maxlen=2 * self.turns)
            while len(self._data) > self.sessions:
                self._data.popitem(last=False)
        self._data.move_to_end(sid)
        return self._data[sid]


histories = _Histories(cfg.history_turns, cfg.max_sessions)


async def _simple(eng: ChatEngine, body: SimpleChat) -> dict[str, str]:
    history = histories.get(body.session_id)
    system = [ChatMessage(role="system", content=body.personality)] if body.personality else []
    user = ChatMessage(role="user", content=body.text)
    reply, _ = await _collect(eng, [*system, *history, user], GenerationOptions(cfg.max_tokens, cfg.temperature))
    history.extend([user, ChatMessage(role="assistant", content=reply)])
    return {"response": reply, "session_id": body.session_id}


@app.post("/chat", summary="One reply for a session, history kept here (bounded)")
async def chat(body: SimpleChat) -> dict[str, str]:
    require_ready(state)
    return await _simple(engine, body)


@app.post("/chat/groq", summary="Like /chat, through Groq (503 unless GROQ_API_KEY is set)")
async def chat_groq(body: SimpleChat) -> dict[str, str]:
    if not groq.available:
        raise ServiceError(503, "Groq is not configured: set GROQ_API_KEY")
    return await _simple(groq, body)
