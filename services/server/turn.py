"""One user turn and the assistant's reply: STT -> chat (streamed) -> chunker -> TTS (streamed).

A turn may start speculatively, at a short pause: it computes everything but holds
its output until the session confirms it (the user stayed silent). Cancelling the
task stops chat generation (the HTTP stream closes) and TTS (its socket closes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from shared.audio import OUT_RATE, float_to_f32le
from shared.clients import ChatClient, SttClient, TtsStream, UpstreamError
from shared.logs import user_text
from shared.metrics import SESSION_ERRORS, TURN_STAGE, TURNS
from shared.protocol import AudioChunk, ErrorOut, Metrics, ResponseText, TranscriptOut, TtsStreamEnd
from shared.protocol import TtsStream as TtsStreamMsg
from shared.replicas import Replicas
from shared.text_chunker import TextChunker

log = logging.getLogger("server.turn")

Payload = str | bytes
def usable_transcript(text: str) -> bool:
    return sum(c.isalnum() for c in text) >= 2


@dataclass
class TurnDeps:
    stt: SttClient
    chat: ChatClient
    tts: Replicas
    send: Callable[[Payload], Awaitable[None]]  # the session's ordered outbox
    on_audio_sent: Callable[[np.ndarray], None]  # audio released to the client (play clock, echo reference)
    binary_audio: bool
    voice: str | None
    max_tokens: int = 60
    first_chunk_max_words: int = 5


@dataclass
class Piece:
    text: str
    samples: int = 0


class TurnState(StrEnum):
    LISTENING = "listening"  # the user is speaking; live captions
    SPECULATING = "speculating"  # the user paused: the answer is computed, its output held
    CONFIRMED = "confirmed"  # the user finished: output is released as it comes
    SPEAKING = "speaking"  # audio of the answer has gone out
    DONE = "done"  # everything was sent (the client may still be playing it)
    INTERRUPTED = "interrupted"  # the user spoke over the answer: cut, what was heard is kept
    MERGED = "merged"  # the user had not finished: forgotten, a later turn `replaces` it
    DROPPED = "dropped"  # never confirmed (the session ended, or nothing usable was said)


_NEXT: dict[TurnState, set[TurnState]] = {
    TurnState.LISTENING: {TurnState.SPECULATING, TurnState.DROPPED},
    TurnState.SPECULATING: {TurnState.LISTENING, TurnState.CONFIRMED, TurnState.DROPPED},
    TurnState.CONFIRMED: {TurnState.SPEAKING, TurnState.DONE, TurnState.INTERRUPTED, TurnState.MERGED},
    TurnState.SPEAKING: {TurnState.DONE, TurnState.INTERRUPTED, TurnState.MERGED},
    TurnState.DONE: {TurnState.INTERRUPTED, TurnState.MERGED},  # its audio may still be playing
}
_ENDED = {TurnState.INTERRUPTED, TurnState.MERGED, TurnState.DROPPED}


class Turn:
    """One user turn, from its first word to the end of the answer: an explicit state machine.

    The turn is created when the user starts speaking (LISTENING). At each pause it
    speculates: transcript, chat and TTS run with their output held; if the user goes on,
    that work is dropped and the turn listens again, keeping its id. Confirmation releases
    the held output; the session only asks the turn to change state, never sets its fields."""

    def __init__(self, turn_id: int, deps: TurnDeps, *, text: str | None = None, replaces: int | None = None) -> None:
        self.id = turn_id
        self.deps = deps
        self.typed = text
        self.replaces = replaces
        self.state = TurnState.LISTENING
        self.by_words = False  # speculating because the words stopped, not the sound (a noisy room)
        self.played_ms: float | None = None  # from client acks
        self.in_history = False  # the session remembered this turn
        self._recorded = False
        self._lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self._fresh(time.perf_counter())

    def _fresh(self, speech_end: float) -> None:
        """What one speculation computes; dropped when the user goes on."""
        self.speech_end = speech_end  # wall clock (perf_counter) of the user's last voiced sample
        self.transcript = self.typed
        self.marks: dict[str, float] = {}
        self.pieces: list[Piece] = []
        self.reply = ""
        self.sent_samples = 0
        self.end_of_turn: float | None = None  # chat engine's P(the user's sentence is finished)
        self.judged = asyncio.Event()  # transcript and the language model's estimate known (or unavailable)
        self.sounds_finished: float | None = None  # Smart Turn's P(finished) from the sound of the speech
        self.heard = asyncio.Event()  # ... known (or unavailable)
        self._listener: asyncio.Task[None] | None = None
        self.finished = False
        self._pending: list[tuple[Payload, np.ndarray | None]] = []  # held until confirmed: (payload, its audio)
        self._ended = 0  # TTS pieces fully received
        self._seq = 0
        self._tts: TtsStream | None = None
        self._skip = 0  # samples of the current piece to drop after a TTS fail-over

    # ------------------------------------------------------------------ state

    def advance(self, new: TurnState) -> None:
        if new not in _NEXT.get(self.state, set()):
            raise RuntimeError(f"turn {self.id}: {self.state} -> {new} is not a transition")
        log.debug("turn %d: %s -> %s", self.id, self.state, new)
        self.state = new

    @property
    def confirmed(self) -> bool:
        return self.state in (TurnState.CONFIRMED, TurnState.SPEAKING, TurnState.DONE)

    @property
    def interrupted(self) -> bool:
        """Cut or forgotten: nothing more of this turn may reach the client."""
        return self.state in _ENDED

    @property
    def open(self) -> bool:
        """Still part of the user's utterance (not yet confirmed)."""
        return self.state in (TurnState.LISTENING, TurnState.SPECULATING)

    def speculate(self, speech_end: float, work: Callable[[], Coroutine[Any, Any, None]],
                  sounds: Callable[[], Awaitable[float | None]] | None = None) -> None:
        """The user paused: `work` (the session's wrapper around run()) computes the answer
        now, its output held until confirm(); `sounds` asks how finished the speech sounds."""
        self.advance(TurnState.SPECULATING)
        self._fresh(speech_end)
        self.mark("created")
        self.task = asyncio.create_task(work())
        if sounds is None:
            self.heard.set()
        else:
            self._listener = asyncio.create_task(self._hear(sounds))

    async def _hear(self, sounds: Callable[[], Awaitable[float | None]]) -> None:
        try:
            self.sounds_finished = await sounds()
        except Exception as exc:  # an optional cue: the words still decide
            log.info("turn %d: no audio end-of-turn estimate (%s)", self.id, exc)
        finally:
            self.mark("sounds_finished")
            self.heard.set()

    async def listen_again(self) -> None:
        """The user goes on: forget the speculative answer; the turn keeps listening."""
        await self.cancel()
        self.advance(TurnState.LISTENING)

    async def cancel(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        task, self.task = self.task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def end(self, state: TurnState) -> None:
        """INTERRUPTED, MERGED or DROPPED (idempotent: a turn ends once)."""
        if self.state not in _ENDED:
            self.advance(state)

    # ------------------------------------------------------------------ output gating

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, (time.perf_counter() - self.speech_end) * 1000)

    async def emit(self, payload: Payload, audio: np.ndarray | None = None) -> None:
        async with self._lock:
            if self.confirmed:
                await self._send(payload, audio)
            else:
                self._pending.append((payload, audio))

    async def _send(self, payload: Payload, audio: np.ndarray | None) -> None:
        if self.interrupted:
            return  # `interrupted` went out: nothing of this turn may follow it
        await self.deps.send(payload)
        if audio is not None and not self.interrupted:
            if self.state == TurnState.CONFIRMED:
                self.advance(TurnState.SPEAKING)
            self.mark("first_audio_sent")
            self.sent_samples += len(audio)
            self.deps.on_audio_sent(audio)

    async def confirm(self) -> None:
        """The user's turn is over: release everything held back, and stream from now on."""
        async with self._lock:
            if self.state != TurnState.SPECULATING:
                return
            self.mark("confirmed")
            self.advance(TurnState.CONFIRMED)
            for payload, audio in self._pending:
                await self._send(payload, audio)
            self._pending.clear()
            if self.finished:
                self.mark_done()
                await self._send(self.metrics(), None)

    def mark_done(self) -> None:
        """Everything the turn had was sent (it may have had nothing: no usable words)."""
        if self.state in (TurnState.CONFIRMED, TurnState.SPEAKING):
            self.advance(TurnState.DONE)

    def metrics(self) -> str:
        return Metrics(turn_id=self.id, stages={k: round(v, 1) for k, v in self.marks.items()}).dump()

    def record(self, outcome: str) -> None:
        """Into the Prometheus metrics, once: how the turn ended and when each stage came."""
        if self._recorded:
            return
        self._recorded = True
        TURNS.labels(outcome=outcome).inc()
        for stage, ms in self.marks.items():
            TURN_STAGE.labels(stage=stage).observe(max(ms, 0.0) / 1000)

    # ------------------------------------------------------------------ pipeline

    async def run(self, transcribe: Callable[[], Awaitable[str]], messages: Callable[[str], list[dict[str, str]]]) -> None:
        tts: TtsStream | None = None
        connect = asyncio.create_task(TtsStream.connect(self.deps.tts))  # in parallel with STT
        try:
            if self.transcript is None:
                self.transcript = await transcribe()
            self.mark("stt")
            if not usable_transcript(self.transcript):
                return
            await self.emit(TranscriptOut(turn_id=self.id, text=self.transcript, replaces=self.replaces).dump())
            try:
                tts = await connect
            except UpstreamError as exc:  # no voice, but the user still gets the text
                log.warning("turn %d: %s; answering in text only", self.id, exc)
                await self.emit(_error("tts_failed", f"{exc.message}; answering in text only"))
            await self._reply(tts, messages(self.transcript))
            await self.emit(TtsStreamEnd(turn_id=self.id).dump())
            self.mark("done")
            self.finished = True
            async with self._lock:
                if self.confirmed:  # else confirm() sends them, with the release time in
                    self.mark_done()
                    await self._send(self.metrics(), None)
            log.info("turn %d: %s -> %s | %s", self.id, user_text(self.transcript), user_text(self.reply), _fmt(self.marks))
        except UpstreamError as exc:
            log.warning("turn %d failed: %s", self.id, exc)
            await self.emit(_error(f"{exc.service}_failed", exc.message))
            await self.emit(TtsStreamEnd(turn_id=self.id).dump())
        finally:
            self.judged.set()
            connect.cancel()
            if tts is None and connect.done() and not connect.cancelled() and connect.exception() is None:
                tts = connect.result()
            if self._tts is not None and self._tts is not tts:  # a fail-over replaced it
                _close_later(self._tts)
            if tts is not None:
                # Closing is the cancel; do not wait for a slow peer here: a barge-in
                # awaits this task on the session's input path.
                _close_later(tts)

    async def _reply(self, tts: TtsStream | None, messages: list[dict[str, str]]) -> None:
        chunker = TextChunker(first_max_words=self.deps.first_chunk_max_words)
        spoken = asyncio.Event()
        chat_done = False
        self._tts = tts
        player = asyncio.create_task(self._play(spoken, lambda: chat_done) if tts else asyncio.sleep(0))
        try:
            async for delta in self.deps.chat.stream(messages, self._on_end_of_turn, max_tokens=self.deps.max_tokens):
                self.mark("first_token")
                self.judged.set()  # engines that cannot estimate the end of turn send none
                self.reply += delta
                await self.emit(ResponseText(turn_id=self.id, text=delta).dump())
                pieces = chunker.push(delta)
                if tts:
                    for piece in pieces:
                        await self._speak(piece)
            if tts:
                for piece in chunker.flush():
                    await self._speak(piece)
            chat_done = True
            if self._ended >= len(self.pieces):
                spoken.set()
            await spoken.wait()
            if player.done() and not player.cancelled() and player.exception() is not None:
                raise player.exception()  # type: ignore[misc]  # the TTS connection broke
        finally:
            player.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await player

    def _on_end_of_turn(self, probability: float) -> None:
        self.end_of_turn = probability
        self.mark("end_of_turn")
        self.judged.set()

    async def _speak(self, text: str) -> None:
        self.mark("first_chunk")
        self.pieces.append(Piece(text))
        assert self._tts is not None
        try:
            await self._tts.speak(text, self.deps.voice, str(len(self.pieces) - 1))
        except UpstreamError:
            pass  # the player sees the broken stream too, and fails over (this piece included)

    async def _play(self, spoken: asyncio.Event, chat_done: Callable[[], bool]) -> None:
        try:
            for attempt in range(2):
                assert self._tts is not None
                try:
                    await self._play_events(self._tts, spoken, chat_done)
                    return
                except UpstreamError as exc:
                    if attempt or self.interrupted or not await self._fail_over(exc):
                        raise
        finally:
            spoken.set()  # also when the TTS connection breaks: the turn must not wait forever

    async def _fail_over(self, exc: UpstreamError) -> bool:
        """The TTS replica died mid-answer: speak the rest on another one, from where the
        audio stopped (Piper is deterministic: the samples already sent are skipped)."""
        old = self._tts
        if old is None or old.pool is None or len(old.pool.replicas) < 2:
            return False
        if old.replica is not None:
            old.pool.failed(old.replica)
        try:
            new = await TtsStream.connect(old.pool)
        except UpstreamError:
            return False
        self._tts = new
        _close_later(old)
        self._skip = self.pieces[self._ended].samples if self._ended < len(self.pieces) else 0
        for i in range(self._ended, len(self.pieces)):
            await new.speak(self.pieces[i].text, self.deps.voice, str(i))
        log.warning("turn %d: TTS replica lost (%s); the rest of the answer goes to another", self.id, exc.detail or exc.message)
        return True

    async def _play_events(self, tts: TtsStream, spoken: asyncio.Event, chat_done: Callable[[], bool]) -> None:
        async for ev in tts.events():
            if isinstance(ev, np.ndarray):
                if self._skip:  # resent after a fail-over: this part was already sent
                    cut = min(self._skip, len(ev))
                    self._skip -= cut
                    ev = ev[cut:]
                    if not len(ev):
                        continue
                self.mark("first_tts_audio")
                if self._ended < len(self.pieces):
                    self.pieces[self._ended].samples += len(ev)
                await self.emit(self._audio_payload(ev), audio=ev)
                continue
            if ev.get("type") == "error":
                log.warning("turn %d: TTS error: %s", self.id, ev.get("message"))
                await self.emit(_error("tts_failed", str(ev.get("message", "speech synthesis failed"))[:200]))
            if ev.get("type") in ("end", "error"):
                self._ended += 1
                if chat_done() and self._ended >= len(self.pieces):
                    spoken.set()
                    return

    def _audio_payload(self, chunk: np.ndarray) -> Payload:
        self._seq += 1
        raw = float_to_f32le(chunk)
        if self.deps.binary_audio:
            return raw
        data = AudioChunk(chunk=base64.b64encode(raw).decode(), sample_rate=OUT_RATE, turn_id=self.id, seq=self._seq)
        return TtsStreamMsg(data=data).dump()

    # ------------------------------------------------------------------ after an interruption

    def spoken_text(self, played_samples: int) -> str:
        """The part of the reply the user heard: whole pieces, then a share of the words of the cut one."""
        out, left = [], played_samples
        for p in self.pieces:
            if left <= 0:
                break
            if left >= p.samples:
                out.append(p.text)
            else:
                words = p.text.split()
                out.append(" ".join(words[: int(len(words) * left / max(p.samples, 1))]))
            left -= p.samples
        return " ".join(w for w in out if w).strip()


_closing: set[asyncio.Task[None]] = set()


def _close_later(tts: TtsStream) -> None:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tts.close(), 5.0)

    task = asyncio.create_task(close())
    _closing.add(task)  # keep a reference until it is done
    task.add_done_callback(_closing.discard)


def _error(code: str, message: str) -> str:
    SESSION_ERRORS.labels(code=code).inc()
    return ErrorOut(code=code, message=message, recoverable=True).dump()


def _fmt(marks: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.0f}ms" for k, v in marks.items())
