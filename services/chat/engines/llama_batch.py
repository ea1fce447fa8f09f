"""Continuous batching for llama.cpp: one thread owns the context and, each step, decodes
the pending tokens of every active sequence in a single `llama_decode`.

Each request gets a slot (a llama.cpp sequence id with its own KV stream, sampler and
stop filter), as the parallel slots of llama.cpp's own server do. Latency first: prompt
tokens of new requests, then the next token of replies still in their first few tokens,
then the bulk of long replies fill the batch (n_batch tokens at most). A slot keeps the
tokens it has in cache after its request ends, and a new request takes the free slot
sharing the longest prefix with its prompt (the few-shot header for everyone, the
whole history for a session's next turn), so only the new suffix is prefilled.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from services.chat import metrics
from services.chat.engines.base import EndOfTurn, GenerationOptions
from services.chat.engines.stops import StopFilter
from services.chat.engines.threads import ThreadGovernor
from shared.service import ServiceError

log = logging.getLogger("chat")

YOUNG_TOKENS = 8  # a reply's first tokens go ahead of the bulk of longer replies
DONE = object()


class Outbox:
    """Bounded hand-off from the scheduler thread to one request's coroutine. The
    scheduler never blocks on it: it skips the sequence while the box is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 64) -> None:
        self._loop, self.maxsize = loop, maxsize
        self._items: deque[object] = deque()
        self._ready = asyncio.Event()

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put(self, item: object) -> None:
        self._items.append(item)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # loop closed: nobody is listening any more
            pass

    async def get(self) -> object:
        while not self._items:
            self._ready.clear()
            if not self._items:
                await self._ready.wait()
        return self._items.popleft()


@dataclass
class Job:
    prompt: list[int]
    opts: GenerationOptions
    outbox: Outbox
    eot_index: int | None = None  # prompt index whose logits give P(end of turn)
    eot_prompt: list[int] | None = None  # ...or a separate open-user prompt, when tokens merge at the boundary
    grammar: str | None = None  # GBNF the reply must follow (a tool call's arguments)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


class _Slot:
    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cached: list[int] = []  # tokens in this sequence's KV cache; position = index
        self.job: Job | None = None
        self.target: list[int] = []  # the prompt being prefilled
        self.eot_at: int | None = None  # index in target
        self.pending: list[int] = []  # tokens to decode next
        self.n_gen = 0
        self.sampler: Any = None
        self.filter: StopFilter | None = None
        self.last_used = 0.0

    @property
    def prefilling(self) -> bool:
        return self.job is not None and self.n_gen == 0


def _common(a: list[int], b: list[int]) -> int:
    n, m = 0, min(len(a), len(b))
    while n < m and a[n] == b[n]:
        n += 1
    return n


class Scheduler:
    def __init__(self, ctx: Any, vocab: Any, n_slots: int, n_batch: int, p_end: Callable[[np.ndarray], float],
                 threads: ThreadGovernor | None = None) -> None:
        self.ctx, self.vocab, self.n_batch, self._p_end = ctx, vocab, n_batch, p_end
        self._threads, self._n_threads = threads, threads.most if threads else 0
        if threads is not None:
            metrics.DECODE_THREADS.set(threads.most)  # the context starts with them; read before the first change
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.slots = [_Slot(i) for i in range(n_slots)]
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._piece = ctypes.create_string_buffer(64)
        self._thread = threading.Thread(target=self._run, name="chat-scheduler", daemon=True)
        self._thread.start()

    # --- called from other threads

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            metrics.QUEUE_DEPTH.set(len(self._queue))
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def queued(self) -> int:
        return len(self._queue)

    def in_flight(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)
        llama_cpp.llama_batch_free(self._batch)

    # --- the scheduler thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self.in_flight():
                    self._cond.wait()
                if self._closed:
                    return
            try:
                busy = self._step()
            except Exception:  # noqa: BLE001 - fail the requests, keep serving
                log.exception("chat scheduler step failed")
                self._fail_all(ServiceError(500, "generation failed", retryable=True))
                busy = True
            if not busy:  # every active reply waits for its reader
                with self._cond:
                    self._cond.wait(0.01)

    def _step(self) -> bool:
        self._reap()
        self._admit()
        plan = self._plan()
        if not plan:
            return False
        b, i, kind = self._batch, 0, "decode"
        for slot, chunk, outputs in plan:
            start = len(slot.cached)
            kind = "prefill" if slot.prefilling else kind
            for k, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, start + k, 1
                b.seq_id[i][0] = slot.seq
                b.logits[i] = k in outputs
                i += 1
        b.n_tokens = i
        if self._threads is not None and (n := self._threads.pick()) != self._n_threads:
            llama_cpp.llama_set_n_threads(self.ctx, n, n)  # other work holds cores: fewer threads, no stalls
            self._n_threads = n
            metrics.DECODE_THREADS.set(n)
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, b)
        metrics.STEP_SECONDS.labels(kind).observe(time.perf_counter() - t0)
        if rc != 0:
            for slot, _, _ in plan:
                self._fail(slot, ServiceError(503, f"llama_decode failed ({rc})", retryable=True))
            return True
        i = 0
        for slot, chunk, outputs in plan:
            self._after_decode(slot, chunk, {k: i + k for k in outputs})
            i += len(chunk)
        return True

    def _reap(self) -> None:
        """Free the slots of cancelled requests (client gone, barge-in) at once."""
        with self._cond:
            if any(j.cancelled.is_set() for j in self._queue):
                self._queue = deque(j for j in self._queue if not j.cancelled.is_set())
                metrics.QUEUE_DEPTH.set(len(self._queue))
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._release(slot)

    def _admit(self) -> None:
        while self._queue:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            with self._cond:
                job = self._queue.popleft()
                metrics.QUEUE_DEPTH.set(len(self._queue))
            first = job.eot_prompt or job.prompt
            slot = max(free, key=lambda s: (_common(s.cached, first), -s.last_used))
            slot.job, slot.n_gen = job, 0
            slot.sampler = _sampler(job.opts, self.n_vocab, self.vocab, job.grammar)
            slot.filter = StopFilter(job.opts.stop)
            self._start_prompt(slot, first, job.eot_index if job.eot_prompt is None else len(first) - 1)
            metrics.ACTIVE_SEQUENCES.set(self.in_flight())

    def _start_prompt(self, slot: _Slot, prompt: list[int], eot_at: int | None) -> None:
        """Keep the cached prefix the prompt shares (at least one token is decoded for its logits)."""
        n = min(_common(slot.cached, prompt), len(prompt) - 1)
        if eot_at is not None:
            n = min(n, eot_at)
        if not llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, n, -1):
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, 0, -1)
            n = 0
        metrics.PROMPT_TOKENS.labels("cached").inc(n)
        metrics.PROMPT_TOKENS.labels("decoded").inc(len(prompt) - n)
        slot.cached, slot.target, slot.eot_at, slot.pending = prompt[:n], prompt, eot_at, prompt[n:]

    def _plan(self) -> list[tuple[_Slot, list[int], set[int]]]:
        """This step's tokens per slot and which of them need logits (chunk indices)."""
        active = [s for s in self.slots if s.job is not None and s.pending]
        prefill = sorted((s for s in active if s.prefilling), key=lambda s: s.job.submitted)  # type: ignore[union-attr]
        gen = [s for s in active if not s.prefilling and not s.job.outbox.full()]  # type: ignore[union-attr]
        gen.sort(key=lambda s: s.n_gen >= YOUNG_TOKENS)
        budget, plan = self.n_batch, []
        for slot in prefill + gen:
            if budget <= 0:
                break
            chunk = slot.pending[:budget]
            budget -= len(chunk)
            start, outputs = len(slot.cached), set()
            if slot.prefilling:
                if slot.eot_at is not None and start <= slot.eot_at < start + len(chunk):
                    outputs.add(slot.eot_at - start)
                if len(chunk) == len(slot.pending):
                    outputs.add(len(chunk) - 1)
            else:
                outputs.add(0)
            plan.append((slot, chunk, outputs))
        return plan

    def _after_decode(self, slot: _Slot, chunk: list[int], rows: dict[int, int]) -> None:
        job = slot.job
        assert job is not None
        start = len(slot.cached)
        slot.cached.extend(chunk)
        slot.pending = slot.pending[len(chunk) :]
        if slot.prefilling and slot.eot_at is not None and start <= slot.eot_at < start + len(chunk):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, rows[slot.eot_at - start]), shape=(self.n_vocab,))
            job.outbox.put(EndOfTurn(self._p_end(logits)))
            slot.eot_at = None
            if slot.target is job.eot_prompt:  # now the reply prompt itself
                self._start_prompt(slot, job.prompt, None)
                return
        if slot.pending:
            return
        tok = llama_cpp.llama_sampler_sample(slot.sampler, self.ctx, rows[len(chunk) - 1])
        if slot.n_gen == 0:
            metrics.TIME_TO_FIRST_TOKEN.observe(time.perf_counter() - job.submitted)
        slot.n_gen += 1
        metrics.TOKENS_GENERATED.inc()
        assert slot.filter is not None
        if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
            return self._finish(slot)
        text = slot.filter.feed(self._token_bytes(tok))
        if text:
            job.outbox.put(text)
        if slot.filter.stopped or slot.n_gen >= job.opts.max_tokens:
            return self._finish(slot)
        slot.pending = [tok]

    def _token_bytes(self, tok: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        return self._piece.raw[: max(n, 0)]

    def _finish(self, slot: _Slot) -> None:
        assert slot.job is not None and slot.filter is not None
        if rest := slot.filter.flush():
            slot.job.outbox.put(rest)
        slot.job.outbox.put(DONE)
        self._release(slot)

    def _fail(self, slot: _Slot, exc: ServiceError) -> None:
        if slot.job is not None:
            slot.job.outbox.put(exc)
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, 0, -1)
        slot.cached = []
        self._release(slot)

    def _fail_all(self, exc: ServiceError) -> None:
        for slot in self.slots:
            self._fail(slot, exc)

    def _release(self, slot: _Slot) -> None:
        """The slot keeps its cached tokens for the next request sharing their prefix."""
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
        slot.job, slot.sampler, slot.filter, slot.pending = None, None, None, []
        slot.last_used = time.perf_counter()
        metrics.ACTIVE_SEQUENCES.set(self.in_flight())


def _sampler(opts: GenerationOptions, n_vocab: int, vocab: Any = None, grammar: str | None = None) -> Any:
    """The sampling of Llama.create_completion (repeat penalty 1.1 over 64 tokens, top-k 40,
    top-p 0.9, min-p 0.05); temperature 0 is greedy, so replies are deterministic. With a
    grammar, only tokens it allows are candidates (and it ends the reply when complete)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    if grammar is not None:
        add(chain, llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"))
    add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, 64, 1.1, 0.0, 0.0))
    if opts.temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    add(chain, llama_cpp.llama_sampler_init_top_k(40))
    add(chain, llama_cpp.llama_sampler_init_top_p(0.9, 1))
    add(chain, llama_cpp.llama_sampler_init_min_p(0.05, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(opts.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED))
    return chain
