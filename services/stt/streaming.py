"""Streaming transcription: partial transcripts while the user talks, a fast final on flush.

Policy (LocalAgreement-2, as ufal/whisper_streaming): every `PASS_EVERY` of new audio
the buffer is decoded again; tokens that two consecutive passes agree on, up to a word
boundary, are committed and never change. Committed tokens are forced as the decoder
prefix of later passes (one batched step, so a pass only generates the uncommitted
tail), and text before the buffer is the prompt. Once the buffer is longer than
`TRIM_AFTER`, it is cut before its last two committed words (word times from the
cross-attention alignment), so windows, passes and the final decode stay short.

A pass is never queued behind another pass of the same stream: the next one starts
when the last is done, over all the audio that arrived meanwhile (passes merge when
the worker falls behind). A flush discards a pending pass and decodes only the tail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.stt.engines.faster_whisper import FasterWhisperEngine, WindowDecode
from services.stt.metrics import ACTIVE_STREAMS, PASS_REALTIME_FACTOR
from services.stt.scheduler import Scheduler
from shared.aio import cancel_and_wait
from shared.audio import STT_RATE
from shared.protocol import SttConfig, SttError, SttFinal, SttFlush, SttPartial, stt_client_message

PASS_EVERY = 0.5  # seconds of new audio between partial passes
TRIM_AFTER = 3.0  # buffer seconds after which a pass also aligns words to trim the buffer
# Measured on the corpus (bench/stt_stream.py): holding back 2 words cost ~1 point of WER
# against faster-whisper's transcribe(), 4 (about 1.5 s of right context) none.
HOLD_WORDS = 4  # the newest words of a hypothesis are never committed: they may still change
KEEP_WORDS = 2  # committed words left in the buffer (as forced prefix) when it is cut
CUT_MARGIN = 0.1  # seconds: cut this much before the end of the word, in case the aligned time is late
MAX_BUFFER = 30.0  # seconds of untrimmed audio held per connection (Whisper's window); more is dropped
LOOP_WORDS = 4  # a run of this many words said twice in one utterance is Whisper looping, not speech
MAX_CONTEXT_KEEP = 200  # committed tokens kept as prompt material

log = logging.getLogger("stt")


@dataclass(frozen=True)
class Snapshot:
    """What one decode needs, copied so the worker never sees the stream change under it."""

    audio: np.ndarray
    language: str | None
    context: list[int]
    prefix: list[int]
    align: bool
    epoch: int
    covered: float  # seconds of new audio since the previous pass
    final: bool = False  # a flush: also read how sure Whisper is that the words end a sentence


class StreamState:
    """One connection's utterance, changed only on the event loop."""

    def __init__(self, engine: FasterWhisperEngine, language: str | None) -> None:
        self.engine, self.language = engine, language
        self.prompt: list[int] = []
        self.epoch = 0
        self._carry = b""
        self.reset()

    def reset(self) -> None:
        self.epoch += 1  # a pass that was running for the old utterance is ignored
        self.buffer = np.zeros(0, np.float32)  # audio since the last trim
        self.trimmed = 0  # samples cut off the front of this utterance
        self.context: list[int] = []  # committed tokens before the buffer
        self.prefix: list[int] = []  # committed tokens inside the buffer
        self.committed = ""  # text of all committed tokens (leading space kept)
        self.hyp: list[int] = []  # the last pass's uncommitted tokens
        self.new_samples = 0
        self.passes, self.max_rtf, self.overflowed = 0, 0.0, False
        self.every = PASS_EVERY  # grows when passes are slow, so they never fall behind the audio

    def configure(self, msg: SttConfig) -> None:
        if msg.language is not None:
            self.language = msg.language
        if msg.prompt is not None:
            text = msg.prompt.strip()
            self.prompt = self.engine.tokenizer(self.language).encode(" " + text) if text else []

    @property
    def duration(self) -> float:
        return (self.trimmed + len(self.buffer)) / STT_RATE

    def feed(self, data: bytes) -> int:
        """Append int16 LE PCM (an odd byte waits for the next frame); return samples dropped."""
        data, self._carry = self._carry + data, b""
        if len(data) % 2:
            data, self._carry = data[:-1], data[-1:]
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        room = int(MAX_BUFFER * STT_RATE) - len(self.buffer)
        kept = x[: max(room, 0)]
        self.buffer = np.concatenate([self.buffer, kept])
        self.new_samples += len(kept)
        return len(x) - len(kept)

    def pass_due(self) -> bool:
        return self.new_samples >= self.every * STT_RATE

    def snapshot(self, final: bool) -> Snapshot:
        covered, self.new_samples = self.new_samples / STT_RATE, 0
        align = not final and len(self.buffer) > TRIM_AFTER * STT_RATE and len(self.prefix) > 1
        return Snapshot(self.buffer.copy(), self.language, self.prompt + self.context, list(self.prefix), align, self.epoch, covered, final)

    def apply(self, snap: Snapshot, d: WindowDecode) -> bool:
        """Commit what this pass and the previous one agree on; True if the partial changed."""
        if snap.epoch != self.epoch:
            return False
        tok = self.engine.tokenizer(self.language)
        before = (self.committed, self.hyp)
        new = [] if self._rejected(d) or d.looped else self._dedup(d.ids)
        n = 0
        while n < min(len(new), len(self.hyp)) and new[n] == self.hyp[n]:
            n += 1
        starts = [i for i, t in enumerate(new) if tok.decode([t]).startswith(" ")]
        # commit whole words only, and never the newest HOLD_WORDS: they may still change
        n = max([i for i in starts[:-HOLD_WORDS] if i <= n] or [0]) if len(starts) > HOLD_WORDS else 0
        if n > 0:
            self.prefix += new[:n]
            self.committed += tok.decode(new[:n])
        self.hyp = new[max(n, 0):]
        if d.word_ends:
            self._trim(d.word_ends)
        return (self.committed, self.hyp) != before

    def _trim(self, words: list[tuple[int, float, float]]) -> None:
        """Cut the buffer before the last KEEP_WORDS committed words: the text before the cut becomes
        prompt, those words stay a forced prefix, so a cut a little inside a word loses nothing."""
        ends, tokens = [], 0
        for n, _, end in words:
            if tokens + n > len(self.prefix):
                break
            tokens += n
            ends.append((tokens, end))
        if len(ends) <= KEEP_WORDS:
            return
        tokens, end = ends[-KEEP_WORDS - 1]
        samples = min(int((end - CUT_MARGIN) * STT_RATE), len(self.buffer))
        self.buffer = self.buffer[samples:]
        self.trimmed += samples
        self.context = (self.context + self.prefix[:tokens])[-MAX_CONTEXT_KEEP:]
        self.prefix = self.prefix[tokens:]

    def _dedup(self, ids: list[int]) -> list[int]:
        """Drop a repeat of the last committed words at the start of the tail (as whisper_streaming
        does: a cut a little early leaves audio of words already in the prompt inside the buffer)."""
        tok = self.engine.tokenizer(self.language)
        starts = [i for i, t in enumerate(ids) if i == 0 or tok.decode([t]).startswith(" ")] + [len(ids)]
        words = [_norm(tok.decode(ids[a:b])) for a, b in zip(starts, starts[1:], strict=False)]
        done = _norm(self.committed).split()
        for k in range(min(len(words), len(done), 12), 0, -1):
            if words[:k] == done[-k:]:
                return ids[starts[k]:]
        # and a phrase of 3+ words said twice at the end (Whisper looping, in other case or punctuation)
        full = done + words
        for k in range(min(len(words), len(full) // 2), 2, -1):
            if full[-k:] == full[-2 * k : -k]:
                return ids[: starts[len(words) - k]]
        # a loop that ends mid-phrase: the tail from the first 4 words said already earlier in the utterance
        n = LOOP_WORDS
        for j in range(len(words) - n + 1):
            earlier, gram = full[: len(done) + j], words[j : j + n]
            if any(earlier[i : i + n] == gram for i in range(len(earlier) - n + 1)):
                return ids[: starts[j]]
        return ids

    def _rejected(self, d: WindowDecode) -> bool:
        """Whisper's noise guard, for the start of an utterance only: once words are committed this
        is speech, and the guard's average log-probability over a short tail is too noisy to trust."""
        return d.rejected and not self.committed

    def partial(self, heard: float) -> SttPartial:
        committed = self.committed.strip()
        tail = self.engine.tokenizer(self.language).decode(self.hyp)
        tail = tail if committed else tail.lstrip()
        return SttPartial(committed=committed, tail=tail.rstrip(), text=(committed + tail).rstrip(), heard=round(heard, 3))

    def final(self, d: WindowDecode | None) -> tuple[str, float | None]:
        """The utterance's words, and how sure Whisper is that they end a sentence (None: the
        decode's own text was not kept as it came, so its reading is not of these words)."""
        ids = self.hyp if d is not None and d.looped else (d.ids if d is not None else [])  # a looping decode: the last pass's tail
        kept = [] if d is None or self._rejected(d) else self._dedup(ids)
        end = d.sentence_end if d is not None and kept == d.ids else None
        return (self.committed + self.engine.tokenizer(self.language).decode(kept)).strip(), end


def _norm(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).strip()


def decode(engine: FasterWhisperEngine, snap: Snapshot) -> WindowDecode:
    return engine.decode_window(snap.audio, snap.language, snap.context, snap.prefix, align=snap.align, sentence_end=snap.final)


class StreamConnection:
    """The WebSocket side: receive audio and messages, run passes, send partials and finals."""

    def __init__(self, ws: WebSocket, engine: FasterWhisperEngine, scheduler: Scheduler, language: str | None) -> None:
        self.ws, self.engine, self.scheduler = ws, engine, scheduler
        self.state = StreamState(engine, language)
        self._audio = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None

    async def run(self) -> None:
        ACTIVE_STREAMS.inc()
        self._start_pump()
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("bytes") is not None:
                    await self._on_audio(msg["bytes"])
                elif msg.get("text") is not None:
                    await self._on_text(msg["text"])
        except WebSocketDisconnect:
            return
        finally:
            ACTIVE_STREAMS.dec()
            await self._stop_pump()

    async def _send(self, text: str) -> None:
        async with self._send_lock:
            await self.ws.send_text(text)

    async def _on_audio(self, data: bytes) -> None:
        dropped = self.state.feed(data)
        if dropped and not self.state.overflowed:
            self.state.overflowed = True  # one error per utterance; the audio that fits is kept
            await self._send(SttError(message=f"more than {MAX_BUFFER:.0f} s of audio buffered: later audio is dropped "
                                              "until flush or reset").dump())
        if self.state.pass_due():
            self._audio.set()

    async def _on_text(self, text: str) -> None:
        try:
            msg = stt_client_message.validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "message"
            await self._send(SttError(message=f"bad message ({where}: {err['msg']}); expected JSON with type config, flush or reset").dump())
            return
        if isinstance(msg, SttConfig):
            self.state.configure(msg)
            return
        await self._stop_pump()
        if isinstance(msg, SttFlush):
            await self._flush()
        if not (isinstance(msg, SttFlush) and msg.keep):
            self.state.reset()
        self._start_pump()

    async def _flush(self) -> None:
        t0 = time.perf_counter()
        st = self.state
        d = None
        if len(st.buffer) >= STT_RATE // 100:  # under 10 ms there is nothing new to decode
            d = await self.scheduler.run("final", decode, self.engine, st.snapshot(final=True))
        text, end = st.final(d)
        final = SttFinal(text=text, sentence_end=None if end is None else round(end, 4), duration=round(st.duration, 3), processing_time=round(time.perf_counter() - t0, 4),
                         passes=st.passes, max_pass_rtf=round(st.max_rtf, 3))
        log.info("final: %.1f s utterance, last %.1f s decoded, %d passes, %.0f ms", st.duration, len(st.buffer) / STT_RATE,
                 st.passes, final.processing_time * 1000)
        await self._send(final.dump())

    def _start_pump(self) -> None:
        self._pump = asyncio.create_task(self._passes())

    async def _stop_pump(self) -> None:
        if self._pump is not None:
            # a queued pass is skipped; a running one finishes and is ignored. Not awaited
            # bare: that would swallow a cancel of our caller, and a lost cancel would hang it.
            await cancel_and_wait(self._pump, "the streaming pass pump")
            self._pump = None

    async def _passes(self) -> None:
        st = self.state
        while True:
            await self._audio.wait()
            self._audio.clear()
            if not st.pass_due():
                continue
            t0, heard, snap = time.perf_counter(), st.duration, st.snapshot(final=False)
            d = await self.scheduler.run("partial", decode, self.engine, snap)
            took = time.perf_counter() - t0
            rtf = took / max(snap.covered, 1e-3)
            st.every = max(PASS_EVERY, 1.5 * took)  # a slow pass (busy worker) spaces the next ones out
            st.passes, st.max_rtf = st.passes + 1, max(st.max_rtf, rtf)
            PASS_REALTIME_FACTOR.observe(rtf)
            # every pass reports, changed or not: "no new words" must mean "none in this much audio",
            # not "no pass lately" (passes space out on a busy worker)
            if st.apply(snap, d) or snap.epoch == st.epoch:
                await self._send(st.partial(heard).dump())
            if st.pass_due():
                self._audio.set()  # audio arrived during the pass: go again at once
