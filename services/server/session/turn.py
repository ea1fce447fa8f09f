"""One user turn and the assistant's reply: STT -> chat (streamed) -> chunker -> TTS (streamed).

A turn may start speculatively, at a short pause: it computes everything but holds
its output until it is confirmed (the user stayed silent). Cancelling its task stops
chat generation (the HTTP stream closes) and TTS (its socket closes).

Its collaborators are handed to it: the transcriber and the prompt at each speculation,
the outbox its output goes to, and who to tell how it ended (`Outcome`). Nothing
outside writes its fields: the turn-taker asks it to speculate, listen again, confirm
or end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.server.session.channel import Audio, Message, Outbox
from services.server.session.turn_state import _ENDED, _NEXT, Outcome, TurnState
from services.server.tools import FALLBACK, MAX_ROUNDS, ToolFailed, ToolRunner
from shared.aio import cancel_and_wait
from shared.clients import ChatClient, Speech, SpeechAudio, UpstreamError, Words
from shared.logs import TURN_LOG, user_text
from shared.metrics import SESSION_ERRORS, TURN_STAGE, TURNS
from shared.protocol import ErrorOut, Metrics, ResponseText, ToolCall, TranscriptOut, TtsStreamEnd, _Out
from shared.text_chunker import TextChunker

log = logging.getLogger("server.turn")
F32 = 4  # bytes per output sample (24 kHz float32 LE)
RESEND_CHUNK = 4800 * F32  # audio sent again after a pause goes in 0.2 s chunks

Transcriber = Callable[[], Awaitable[str | Words]]
Prompt = list[dict[str, Any]]  # the conversation so far (system prompt first); the user's words are added


def usable_transcript(text: str) -> bool:
    return sum(c.isalnum() for c in text) >= 2


@dataclass
class TurnDeps:
    """What every turn of a session shares."""

    chat: ChatClient
    open_speech: Callable[[str | None], Awaitable[Speech]]  # a voice -> one answer's speech (Upstreams.open_speech)
    outbox: Outbox
    on_audio_sent: Callable[[int, bytes], None]  # (turn id, pcm): the client has it (play clock, echo reference)
    voice: str | None
    max_tokens: int = 60
    first_chunk_max_words: int = 5
    tools: ToolRunner | None = None  # the agent's tools (None: it has none)


@dataclass
class Piece:
    text: str
    samples: int = 0


class Turn:
    """One user turn, from its first word to the end of the answer: an explicit state machine.

    The turn is created when the user starts speaking (LISTENING). At each pause it
    speculates: transcript, chat and TTS run with their output held; if the user goes on,
    that work is dropped and the turn listens again, keeping its id. Confirmation releases
    the held output."""

    def __init__(self, turn_id: int, deps: TurnDeps, on_end: Callable[[Turn, Outcome], None], *,
                 text: str | None = None, replaces: int | None = None) -> None:
        self.id = turn_id
        self.deps = deps
        self._on_end = on_end
        self.typed = text
        self.replaces = replaces
        self.state = TurnState.LISTENING
        self.by_words = False  # speculating because the words stopped, not the sound (a noisy room)
        self._recorded = False
        self.task: asyncio.Task[None] | None = None
        # confirmed and not paused: the answer may act (call tools). A held (speculative) answer
        # must not, the user may go on; nor a paused one, the speech over it may be "no, wait".
        self.released = asyncio.Event()
        self._pauses = 0  # bumped at each pause: audio queued before it is no longer the client's
        self._before_pause = TurnState.CONFIRMED
        self._fresh(time.perf_counter())

    def _fresh(self, speech_end: float) -> None:
        """What one speculation computes; dropped when the user goes on."""
        self.speech_end = speech_end  # wall clock (perf_counter) of the user's last voiced sample
        self.transcript = self.typed
        self.marks: dict[str, float] = {}
        self.pieces: list[Piece] = []
        self.reply = ""
        self.end_of_turn: float | None = None  # chat engine's P(the user's sentence is finished)
        self.judged = asyncio.Event()  # transcript and the language model's estimate known (or unavailable)
        self.sounds_finished: float | None = None  # Smart Turn's P(finished) from the sound of the speech
        self.sentence_end: float | None = None  # the STT's P(the words end a sentence), with the transcript
        self.speech_s = 0.0  # how long the user had spoken at this pause (the learned model's speaking rate)
        self.learned_wait: float | None = None  # the learned end-of-turn model's silence, once its cues are in
        self.heard = asyncio.Event()  # ... known (or unavailable)
        self._listener: asyncio.Task[None] | None = None
        self.finished = False
        self._pending: list[_Out | Audio | Message] = []  # held until confirmed (or resumed)
        self.audio = bytearray()  # the reply's audio so far, in order (sent again from where a pause cut it)
        self._ended = 0  # TTS pieces fully received
        self._player: asyncio.Task[None] | None = None  # the reply's speech to the client
        self._speech_lost = False  # its stream broke mid-reply: the user was told, the rest goes as text
        self.outcome: Outcome | None = None  # set once the pipeline ended

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

    def speculate(self, speech_end: float, transcribe: Transcriber, prompt: Prompt,
                  sounds: Callable[[], Awaitable[float | None]] | None = None, by_words: bool = False, speech_s: float = 0.0) -> None:
        """The user paused: compute the answer now, its output held until confirm();
        `sounds` asks how finished the speech sounds."""
        self.advance(TurnState.SPECULATING)
        self._fresh(speech_end)
        self.by_words, self.speech_s = by_words, speech_s
        self.mark("created")
        self.task = asyncio.create_task(self._run(transcribe, prompt))
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
        if task is not None:
            await cancel_and_wait(task, f"turn {self.id}'s work")

    def end(self, state: TurnState) -> None:
        """INTERRUPTED, MERGED or DROPPED (idempotent: a turn ends once)."""
        if self.state not in _ENDED:
            self.advance(state)

    # ------------------------------------------------------------------ output gating

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, (time.perf_counter() - self.speech_end) * 1000)

    def _live(self) -> bool:
        return not self.interrupted

    def emit(self, msg: _Out) -> None:
        if self.confirmed:
            self.deps.outbox.put(msg, self._live, self.id)
        elif not self.interrupted:
            self._pending.append(msg)  # held: speculating, or paused

    async def emit_audio(self, pcm: bytes) -> None:
        if self.confirmed:
            await self.deps.outbox.room()  # waits while the client is far behind
        self.audio += pcm
        item = self._audio_item(pcm)
        if self.confirmed:
            self.deps.outbox.put_audio(item)
        elif not self.interrupted:
            self._pending.append(item)

    def _audio_item(self, pcm: bytes) -> Audio:
        pauses = self._pauses

        def sent(pcm: bytes) -> None:
            if pauses == self._pauses:  # else it went out as we paused: the client drops it at `interrupted`
                self._sent(pcm)

        return Audio(self.id, pcm, self._live, sent)

    def _sent(self, pcm: bytes) -> None:
        if self.state == TurnState.CONFIRMED:
            self.advance(TurnState.SPEAKING)
        self.mark("first_audio_sent")
        self.deps.on_audio_sent(self.id, pcm)

    def confirm(self) -> None:
        """The user's turn is over: release everything held back (queued, never awaited:
        this runs on the input path), and stream from now on."""
        if self.state != TurnState.SPECULATING:
            return
        self.mark("confirmed")
        self.advance(TurnState.CONFIRMED)
        self.released.set()
        self._release()
        if self.finished:
            self._complete()

    def _release(self) -> None:
        """What was held goes to the outbox, in order."""
        for item in self._pending:
            if isinstance(item, Audio):
                self.deps.outbox.put_audio(item)
            elif isinstance(item, Message):  # taken back from the outbox at a pause
                self.deps.outbox.put(item.msg, item.live, item.turn_id)
            else:
                self.deps.outbox.put(item, self._live, self.id)
        self._pending.clear()

    def pause(self) -> bool:
        """Speech over the reply (the client was told to stop playing it): what had not gone
        out comes back from the outbox, and it and what comes next wait for resume() or the cut."""
        if self.state not in (TurnState.CONFIRMED, TurnState.SPEAKING, TurnState.DONE):
            return False
        self._before_pause = self.state
        self.advance(TurnState.PAUSED)
        self.released.clear()
        self._pauses += 1
        self._pending = [*self.deps.outbox.take(self.id), *self._pending]
        return True

    def resume(self, played_samples: int) -> None:
        """Not the user after all: the audio from `played_samples` on is sent again (the client
        dropped what it had buffered), then everything held."""
        if self.state != TurnState.PAUSED:
            return
        self.advance(self._before_pause)
        self.released.set()
        # the audio from there is sent again in full (what was held, taken back or in flight at the
        # pause included): the held chunks themselves are not; the rest of what was held follows
        again = bytes(self.audio[played_samples * F32 :])
        for k in range(0, len(again), RESEND_CHUNK):
            self.deps.outbox.put_audio(self._audio_item(again[k : k + RESEND_CHUNK]))
        self._pending = [i for i in self._pending if not isinstance(i, Audio)]
        ended = any(isinstance(i.msg if isinstance(i, Message) else i, TtsStreamEnd) for i in self._pending)
        self._release()
        if self.finished and not ended:  # its end went out before the pause; the client cleared it with the audio
            self.deps.outbox.put(TtsStreamEnd(turn_id=self.id), self._live, self.id)
        if self.finished and self.state in (TurnState.CONFIRMED, TurnState.SPEAKING):
            self._complete()  # the pipeline ended while paused

    def _complete(self) -> None:
        """Everything the turn had is queued: DONE, and its timings go out after it (made then:
        held audio released at the confirmation may not have been sent yet)."""
        self.mark_done()
        self.deps.outbox.put(lambda: Metrics(turn_id=self.id, stages=self.stages()), self._live, self.id)

    def mark_done(self) -> None:
        """Everything the turn had was sent (it may have had nothing: no usable words)."""
        if self.state in (TurnState.CONFIRMED, TurnState.SPEAKING):
            self.advance(TurnState.DONE)

    def stages(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.marks.items()}

    def record(self, outcome: str) -> None:
        """Into the Prometheus metrics, once: how the turn ended and when each stage came."""
        if self._recorded:
            return
        self._recorded = True
        TURNS.labels(outcome=outcome).inc()
        for stage, ms in self.marks.items():
            TURN_STAGE.labels(stage=stage).observe(max(ms, 0.0) / 1000)

    # ------------------------------------------------------------------ pipeline

    async def _run(self, transcribe: Transcriber, prompt: Prompt) -> None:
        TURN_LOG.set(self.id)  # this task's own context: every line it logs names the turn
        try:
            outcome = await self._pipeline(transcribe, prompt)
        except Exception:  # a bug must not leave the session "speaking" forever
            log.exception("turn %d crashed", self.id)
            self.emit(_error("internal", "this turn failed; please say it again"))
            outcome = Outcome.FAILED
        finally:
            self.judged.set()
        self.outcome = outcome
        self._on_end(self, outcome)

    async def _pipeline(self, transcribe: Transcriber, prompt: Prompt) -> Outcome:
        speech: Speech | None = None
        opening: asyncio.Future[Speech] = asyncio.ensure_future(self.deps.open_speech(self.deps.voice))  # in parallel with STT
        try:
            if self.transcript is None:
                got = await transcribe()
                self.transcript, self.sentence_end = (got, None) if isinstance(got, str) else (got.text, got.sentence_end)
            self.mark("stt")
            if not usable_transcript(self.transcript):
                return Outcome.NOTHING
            self.emit(TranscriptOut(turn_id=self.id, text=self.transcript, replaces=self.replaces))
            try:
                speech = await opening
            except UpstreamError as exc:  # no voice, but the user still gets the text
                log.warning("turn %d: %s; answering in text only", self.id, exc)
                self.emit(_error("tts_failed", f"{exc.message}; answering in text only"))
            await self._reply(speech, [*prompt, {"role": "user", "content": self.transcript}])
            self.emit(TtsStreamEnd(turn_id=self.id))
            self.mark("done")
            self.finished = True
            if self.confirmed:  # else confirm() completes it, with the release time in
                self._complete()
            log.info("turn %d: %s -> %s | %s", self.id, user_text(self.transcript), user_text(self.reply), _fmt(self.marks))
            return Outcome.ANSWERED
        except UpstreamError as exc:
            log.warning("turn %d failed: %s", self.id, exc)
            self.emit(_error(f"{exc.service}_failed", exc.message))
            self.emit(TtsStreamEnd(turn_id=self.id))
            return Outcome.FAILED
        finally:
            opening.cancel()
            if speech is None and opening.done() and not opening.cancelled() and opening.exception() is None:
                speech = opening.result()
            if speech is not None:
                _close_later(speech)  # closing is the cancel; a barge-in awaits this task on the input path

    async def _reply(self, speech: Speech | None, messages: Prompt) -> None:
        """Chat deltas to the client as text, cut into pieces for the speech; the tools the
        reply calls, then the chat again with their results; returns once all is spoken."""
        chunker = TextChunker(first_max_words=self.deps.first_chunk_max_words)
        chat_done = asyncio.Event()
        player = self._player = asyncio.create_task(self._play(speech, chat_done)) if speech is not None else None
        tools = self.deps.tools
        try:
            for rounds in range(MAX_ROUNDS + 1):
                offer = (tools.offer() if tools else {}) | ({"tool_choice": "none"} if rounds == MAX_ROUNDS else {})
                calls = await self._chat(messages, speech, chunker, offer, self._on_end_of_turn if rounds == 0 else None)
                if not calls or tools is None:
                    break
                await self._flush(speech, chunker)  # what it said before the call is heard first
                await self._may_act()
                self.mark("tool_call")

                async def filler(text: str) -> None:
                    await self._words(f" {text}", speech, chunker)
                    await self._flush(speech, chunker)

                try:
                    messages = [*messages, *await tools.answer(self.id, calls, filler)]
                except ToolFailed:
                    await self._words(f" {FALLBACK}", speech, chunker)
                    break
            if not self.reply.strip():  # a sampled reply can end at once: say something, greedily
                log.warning("turn %d: the chat reply was empty; asking again at temperature 0", self.id)
                await self._chat(messages, speech, chunker, {"temperature": 0} | (tools.offer() | {"tool_choice": "none"} if tools else {}), None)
            await self._flush(speech, chunker)
            chat_done.set()
            if player is not None and self._ended < len(self.pieces):
                await asyncio.wait({player})  # all spoken, or the speech broke: told once, a bug raised
                self._speech_broke()
        finally:
            if player is not None:
                await cancel_and_wait(player, f"turn {self.id}'s speech player")

    async def _may_act(self) -> None:
        """Wait until the answer is released and not paused (woken by a release that a pause
        took back before this task ran: wait again)."""
        while True:
            await self.released.wait()
            if self.released.is_set():
                return

    async def _chat(self, messages: Prompt, speech: Speech | None, chunker: TextChunker, offer: dict[str, Any],
                    on_end_of_turn: Callable[[float], None] | None) -> list[ToolCall]:
        """One chat request: its words go out as they come; the tools it calls are returned."""
        calls: list[ToolCall] = []
        async for item in self.deps.chat.stream(messages, on_end_of_turn, max_tokens=self.deps.max_tokens, **offer):
            self.mark("first_token")
            self.judged.set()  # engines that cannot estimate the end of turn send none
            if isinstance(item, ToolCall):
                calls.append(item)
            else:
                await self._words(item, speech, chunker)
        return calls

    async def _words(self, text: str, speech: Speech | None, chunker: TextChunker) -> None:
        self.reply += text
        self.emit(ResponseText(turn_id=self.id, text=text))
        if speech is not None and not self._speech_broke():
            for piece in chunker.push(text):
                await self._say(speech, piece)

    async def _flush(self, speech: Speech | None, chunker: TextChunker) -> None:
        if speech is not None and not self._speech_broke():
            for piece in chunker.flush():
                await self._say(speech, piece)

    def _on_end_of_turn(self, probability: float) -> None:
        self.end_of_turn = probability
        self.mark("end_of_turn")
        self.judged.set()

    async def _say(self, speech: Speech, text: str) -> None:
        self.mark("first_chunk")
        self.pieces.append(Piece(text))
        await speech.say(text)

    def _speech_broke(self) -> bool:
        """Has the speech's stream broken (its service died)? The user is told at once, not
        once the chat has written a reply nobody can hear; the rest of it goes as text."""
        player = self._player
        if player is None or not player.done() or player.cancelled() or (exc := player.exception()) is None:
            return False
        if not isinstance(exc, UpstreamError):
            raise exc  # a bug, not an outage: the turn fails loudly
        if not self._speech_lost:
            self._speech_lost = True
            log.warning("turn %d: speech lost mid-reply: %s; the rest in text only", self.id, exc)
            self.emit(_error(f"{exc.service}_failed", f"{exc.message}; answering in text only"))
        return True

    async def _play(self, speech: Speech, chat_done: asyncio.Event) -> None:
        """The speech's audio to the client, piece by piece, until every piece has ended."""
        async for ev in speech.events():
            if isinstance(ev, SpeechAudio):
                self.mark("first_tts_audio")
                self.pieces[ev.piece].samples += len(ev.pcm) // F32
                await self.emit_audio(ev.pcm)
                continue
            if ev.error:
                log.warning("turn %d: TTS error: %s", self.id, ev.error)
                self.emit(_error("tts_failed", ev.error[:200]))
            self._ended += 1
            if chat_done.is_set() and self._ended >= len(self.pieces):
                return

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


def _close_later(speech: Speech) -> None:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(speech.close(), 5.0)

    task = asyncio.create_task(close())
    _closing.add(task)  # keep a reference until it is done
    task.add_done_callback(_closing.discard)


def _error(code: str, message: str) -> ErrorOut:
    SESSION_ERRORS.labels(code=code).inc()
    return ErrorOut(code=code, message=message, recoverable=True)


def _fmt(marks: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.0f}ms" for k, v in marks.items())
