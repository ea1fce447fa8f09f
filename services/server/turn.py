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
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from shared.audio import OUT_RATE, float_to_f32le
from shared.clients import ChatClient, SttClient, TtsStream, UpstreamError
from shared.logs import user_text
from shared.protocol import AudioChunk, ErrorOut, Metrics, ResponseText, TranscriptOut, TtsStreamEnd
from shared.protocol import TtsStream as TtsStreamMsg
from shared.text_chunker import TextChunker

log = logging.getLogger("server.turn")

Payload = str | bytes
_INCOMPLETE_ENDINGS = {
    "and", "or", "but", "so", "because", "the", "a", "an", "of", "to", "with", "for", "in", "on", "at",
    "that", "which", "who", "if", "then", "um", "uh", "my", "your", "is", "are", "was", "were",
}


def reads_complete(text: str) -> bool:
    """Does a transcript read like a finished thought? (Whisper punctuates what it hears.)"""
    t = text.strip().rstrip("\"')]")
    if not t or t.endswith(("...", "…", ",", ";", ":", "-")) or t[-1] not in ".!?":
        return False
    words = re.findall(r"[a-z0-9']+", t.lower())
    return bool(words) and words[-1] not in _INCOMPLETE_ENDINGS


def usable_transcript(text: str) -> bool:
    return sum(c.isalnum() for c in text) >= 2


@dataclass
class TurnDeps:
    stt: SttClient
    chat: ChatClient
    tts_url: str
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


class Turn:
    def __init__(self, turn_id: int, deps: TurnDeps, speech_end: float, *, audio: np.ndarray | None = None, text: str | None = None) -> None:
        self.id = turn_id
        self.deps = deps
        self.audio = audio
        self.transcript = text
        self.speech_end = speech_end  # wall clock (perf_counter) of the user's last voiced sample
        self.marks: dict[str, float] = {}
        self.pieces: list[Piece] = []
        self.reply = ""
        self.sent_samples = 0
        self.played_ms: float | None = None  # from client acks
        self.confirmed = False
        self.end_of_turn: float | None = None  # chat engine's P(the user's sentence is finished)
        self.judged = asyncio.Event()  # transcript and end-of-turn estimate known (or unavailable)
        self.finished = False
        self.interrupted = False
        self.in_history = False  # the session remembered this turn
        self._pending: list[tuple[Payload, np.ndarray | None]] = []  # held until confirmed: (payload, its audio)
        self._ended = 0  # TTS pieces fully received
        self._lock = asyncio.Lock()
        self._seq = 0
        self.task: asyncio.Task[None] | None = None
        self.mark("created")

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
            self.mark("first_audio_sent")
            self.sent_samples += len(audio)
            self.deps.on_audio_sent(audio)

    async def confirm(self) -> None:
        """The user's turn is over: release everything held back, and stream from now on."""
        async with self._lock:
            if self.confirmed:
                return
            self.mark("confirmed")
            for payload, audio in self._pending:
                await self._send(payload, audio)
            self._pending.clear()
            self.confirmed = True
            if self.finished:
                await self._send(self.metrics(), None)

    def metrics(self) -> str:
        return Metrics(turn_id=self.id, stages={k: round(v, 1) for k, v in self.marks.items()}).dump()

    # ------------------------------------------------------------------ pipeline

    async def run(self, messages: Callable[[str], list[dict[str, str]]]) -> None:
        tts: TtsStream | None = None
        connect = asyncio.create_task(TtsStream.connect(self.deps.tts_url))  # in parallel with STT
        try:
            if self.transcript is None:
                assert self.audio is not None
                self.transcript = await self.deps.stt.transcribe(self.audio)
            self.mark("stt")
            if not usable_transcript(self.transcript):
                return
            await self.emit(TranscriptOut(turn_id=self.id, text=self.transcript).dump())
            try:
                tts = await connect
            except UpstreamError as exc:  # no voice, but the user still gets the text
                log.warning("turn %d: %s; answering in text only", self.id, exc)
                await self.emit(ErrorOut(code="tts_failed", message=f"{exc}; answering in text only", recoverable=True).dump())
            await self._reply(tts, messages(self.transcript))
            await self.emit(TtsStreamEnd(turn_id=self.id).dump())
            self.mark("done")
            self.finished = True
            async with self._lock:
                if self.confirmed:  # else confirm() sends them, with the release time in
                    await self._send(self.metrics(), None)
            log.info("turn %d: %s -> %s | %s", self.id, user_text(self.transcript), user_text(self.reply), _fmt(self.marks))
        except UpstreamError as exc:
            log.warning("turn %d failed: %s", self.id, exc)
            await self.emit(ErrorOut(code=f"{exc.service}_failed", message=str(exc), recoverable=True).dump())
            await self.emit(TtsStreamEnd(turn_id=self.id).dump())
        finally:
            self.judged.set()
            connect.cancel()
            if tts is None and connect.done() and not connect.cancelled() and connect.exception() is None:
                tts = connect.result()
            if tts is not None:
                with contextlib.suppress(Exception):
                    await tts.close()

    async def _reply(self, tts: TtsStream | None, messages: list[dict[str, str]]) -> None:
        chunker = TextChunker(first_max_words=self.deps.first_chunk_max_words)
        spoken = asyncio.Event()
        chat_done = False
        player = asyncio.create_task(self._play(tts, spoken, lambda: chat_done) if tts else asyncio.sleep(0))
        try:
            async for delta in self.deps.chat.stream(messages, self._on_end_of_turn, max_tokens=self.deps.max_tokens):
                self.mark("first_token")
                self.judged.set()  # engines that cannot estimate the end of turn send none
                self.reply += delta
                await self.emit(ResponseText(turn_id=self.id, text=delta).dump())
                pieces = chunker.push(delta)
                if tts:
                    for piece in pieces:
                        await self._speak(tts, piece)
            if tts:
                for piece in chunker.flush():
                    await self._speak(tts, piece)
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

    async def _speak(self, tts: TtsStream, text: str) -> None:
        self.mark("first_chunk")
        self.pieces.append(Piece(text))
        await tts.speak(text, self.deps.voice, str(len(self.pieces) - 1))

    async def _play(self, tts: TtsStream, spoken: asyncio.Event, chat_done: Callable[[], bool]) -> None:
        try:
            await self._play_events(tts, spoken, chat_done)
        finally:
            spoken.set()  # also when the TTS connection breaks: the turn must not wait forever

    async def _play_events(self, tts: TtsStream, spoken: asyncio.Event, chat_done: Callable[[], bool]) -> None:
        async for ev in tts.events():
            if isinstance(ev, np.ndarray):
                self.mark("first_tts_audio")
                if self._ended < len(self.pieces):
                    self.pieces[self._ended].samples += len(ev)
                await self.emit(self._audio_payload(ev), audio=ev)
                continue
            if ev.get("type") == "error":
                await self.emit(ErrorOut(code="tts_failed", message=str(ev.get("message")), recoverable=True).dump())
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


def _fmt(marks: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.0f}ms" for k, v in marks.items())
