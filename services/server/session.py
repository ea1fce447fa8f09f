"""One WebSocket session: speech detection, turn-taking, barge-in, memory.

State is small and explicit: at most one *pending* turn (speculative, started at a
pause, output held back) and one *active* turn (confirmed, streaming to the user).
The assistant "is speaking" while a turn is active or the client still has audio
to play (a play clock advanced by every chunk sent, corrected by playback acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from starlette.websockets import WebSocket

from services.server.agents import Agent
from services.server.echo import EchoGuard
from services.server.history import History
from services.server.turn import Payload, Turn, TurnDeps, reads_complete
from shared.audio import OUT_RATE, STT_RATE, pcm16_to_float
from shared.clients import ChatClient, SttClient
from shared.config import ServerSettings
from shared.protocol import (
    ConfigIn,
    DetectorOverrides,
    ErrorOut,
    InitMessage,
    Interrupted,
    InterruptIn,
    PlaybackIn,
    SpeechEnd,
    SpeechStart,
    TranscriptIn,
)
from shared.speech_detector import (
    AudioSpeechDetector,
    DetectorConfig,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    UtteranceEnded,
)

log = logging.getLogger("server.session")


@dataclass
class Services:
    stt: SttClient
    chat: ChatClient
    cfg: ServerSettings


def make_detector(cfg: ServerSettings, *overrides: DetectorOverrides | None) -> AudioSpeechDetector:
    base = DetectorConfig(
        energy_threshold=cfg.energy_threshold,
        min_speech_duration=cfg.min_speech_duration,
        pause_duration=cfg.pause_duration,
        max_silence_duration=cfg.max_silence_duration,
        max_recording_duration=cfg.max_recording_duration,
    )
    engine = cfg.detector
    for o in overrides:
        if o is not None:
            base = base.with_overrides(**o.model_dump(exclude={"engine"}))
            engine = o.engine or engine
    if engine == "silero":
        from shared.silero import SileroClassifier

        return AudioSpeechDetector(base, SileroClassifier())
    return AudioSpeechDetector(base)


class Session:
    def __init__(self, ws: WebSocket, session_id: str, init: InitMessage, agent: Agent, services: Services) -> None:
        self.ws, self.id, self.agent = ws, session_id, agent
        self.cfg = services.cfg
        self.system = init.systemPrompt or agent.systemPrompt
        self.allow_interruptions = init.allowInterruptions
        self.detector = make_detector(self.cfg, agent.speechDetector, init.speechDetector)
        self.history = History(self.cfg.history_turns, self.cfg.history_tokens)
        self.echo = EchoGuard(threshold=self.cfg.echo_threshold)
        self.deps = TurnDeps(
            stt=services.stt,
            chat=services.chat,
            tts_url=self.cfg.tts_url,
            send=self.send,
            on_audio_sent=self._on_audio_sent,
            binary_audio=init.audioOut == "binary",
            voice=init.voice or agent.voice,
            first_chunk_max_words=self.cfg.first_chunk_max_words,
        )
        self.pending: Turn | None = None  # speculative, output held
        self.active: Turn | None = None  # confirmed, output streaming
        self.last_turn: Turn | None = None
        self._turn_ids = 0
        self._send_lock = asyncio.Lock()
        self._odd_byte = b""
        self._play_until = 0.0  # wall clock when the client will have played all it got
        self._utterance = "normal"  # "normal" | "ignored" (backchannel, echo) | "barge" (may interrupt)
        self._barge_onset = 0.0
        self._closed = False
        self._early: Turn | None = None

    # ------------------------------------------------------------------ outbox

    async def send(self, payload: Payload) -> None:
        if self._closed:
            return
        async with self._send_lock:
            if isinstance(payload, bytes):
                await self.ws.send_bytes(payload)
            else:
                await self.ws.send_text(payload)

    def _on_audio_sent(self, chunk: np.ndarray) -> None:
        start = max(self._play_until, time.perf_counter())
        self.echo.on_output(chunk, start)
        self._play_until = start + len(chunk) / OUT_RATE

    def speaking(self) -> bool:
        return self.active is not None or time.perf_counter() < self._play_until

    async def error(self, code: str, message: str, recoverable: bool = True) -> None:
        await self.send(ErrorOut(code=code, message=message, recoverable=recoverable).dump())

    # ------------------------------------------------------------------ input

    async def on_audio(self, data: bytes) -> None:
        data = self._odd_byte + data
        self._odd_byte = data[-1:] if len(data) % 2 else b""  # odd-length frames: keep the byte for the next one
        x = pcm16_to_float(data)
        if x.size == 0:
            return
        now = time.perf_counter()
        self.echo.on_input(x, now)
        for ev in self.detector.push(x):
            speech_end = now - (self.detector.time - getattr(ev, "t", self.detector.time))
            await self._on_event(ev, speech_end)
        await self._check_progress()

    async def _on_event(self, ev: object, speech_end: float) -> None:
        if isinstance(ev, SpeechStarted):
            self._utterance, self._early = "normal", None  # a new utterance continues nothing
            if self.speaking():
                # while we talk, speech only counts once it lasts longer than a backchannel
                # and does not follow our own voice (see _check_progress)
                self._barge(ev.t)
                return
            await self.send(SpeechStart().dump())
        elif self._utterance != "normal":
            if isinstance(ev, UtteranceEnded):  # a backchannel, our own echo, or talk-over we ignore
                self._utterance, self._early = "normal", None
        elif isinstance(ev, SpeechPaused):
            await self._start_turn(ev.audio, speech_end, confirmed=False)
        elif isinstance(ev, SpeechResumed):
            # the user goes on: drop the speculative answer; the next pause sees both parts as one turn
            if self.pending is not None:
                await self._cancel(self.pending)
                self.pending = None
            elif self._early is not None:
                if self._early.sent_samples == 0:  # nothing played yet, so this cannot be our echo
                    await self._merge_early()
                else:
                    self._barge(ev.t)
        elif isinstance(ev, UtteranceEnded):
            await self.send(SpeechEnd(duration=round(len(ev.audio) / STT_RATE, 3)).dump())
            if self._early is not None:  # already answered: the transcript read complete
                self._early = None
            elif self.pending is not None:
                await self._promote(self.pending)
            else:
                await self._start_turn(ev.audio, speech_end, confirmed=True)

    def _barge(self, onset: float) -> None:
        """Speech while we talk; with `_early` set it continues the utterance we answered early."""
        self._utterance = "barge" if self.allow_interruptions else "ignored"
        self._barge_onset = onset

    async def _merge_early(self) -> None:
        """The user had not finished after all: forget the early answer; their turn goes on."""
        early, self._early = self._early, None
        if early is not None and self.speaking():
            await self.interrupt(merged=True)
        elif early is not None:
            self._forget(early)

    async def _check_progress(self) -> None:
        """Time-based decisions that are not detector events."""
        det = self.detector
        if self._utterance == "barge" and det.in_speech and det.silence == 0.0 and det.time - self._barge_onset >= self.cfg.backchannel_max:
            if self.speaking() and self.echo.is_echo():
                self._utterance = "ignored"
                log.info("session %s: speech follows our own playback: echo, ignored", self.id)
            else:
                self._utterance = "normal"
                if self._early is not None:  # the user went on after an early answer: one turn
                    await self._merge_early()
                else:
                    await self.send(SpeechStart().dump())
                    await self.interrupt()
        p = self.pending
        if p is not None and p.judged.is_set() and self._reads_finished(p) and det.silence >= self.cfg.confirm_silence:
            self._early = p  # promoted before the detector closed the utterance
            await self._promote(p)

    def _reads_finished(self, turn: Turn) -> bool:
        """End the turn before the silence limit only if the words say the thought is complete:
        Whisper's final punctuation and, where the chat engine can tell, its language model."""
        if turn.transcript is None or not reads_complete(turn.transcript):
            return False
        return turn.end_of_turn is None or turn.end_of_turn >= self.cfg.end_of_turn_threshold

    async def on_text(self, msg: object) -> None:
        if isinstance(msg, TranscriptIn):
            await self.interrupt()
            await self._start_turn(None, time.perf_counter(), confirmed=True, text=msg.text)
        elif isinstance(msg, PlaybackIn):
            for t in (self.active, self.last_turn):
                if t is not None and t.id == msg.turn_id and not t.interrupted:
                    # an ack for an interrupted turn may still be in flight: it must not restart the play clock
                    t.played_ms = msg.played_ms
                    remaining = t.sent_samples / OUT_RATE - msg.played_ms / 1000
                    self._play_until = time.perf_counter() + max(0.0, remaining)
        elif isinstance(msg, InterruptIn):
            await self.interrupt()
        elif isinstance(msg, ConfigIn):
            if msg.allowInterruptions is not None:
                self.allow_interruptions = msg.allowInterruptions
            if msg.voice is not None:
                self.deps.voice = msg.voice
            if msg.speechDetector is not None:
                if self.detector.in_speech:
                    await self.error("config_deferred", "speech detector settings change between utterances; try again")
                else:
                    self.detector = make_detector(self.cfg, self.agent.speechDetector, msg.speechDetector)

    # ------------------------------------------------------------------ turns

    def _messages(self, user: str) -> list[dict[str, str]]:
        return [*self.history.messages(self.system), {"role": "user", "content": user}]

    async def _start_turn(self, audio: np.ndarray | None, speech_end: float, confirmed: bool, text: str | None = None) -> None:
        if self.pending is not None:
            await self._cancel(self.pending)
        self._turn_ids += 1
        turn = Turn(self._turn_ids, self.deps, speech_end, audio=audio, text=text)
        turn.task = asyncio.create_task(self._run(turn))
        self.pending = turn
        if confirmed:
            await self._promote(turn)
        # else: _check_progress, run on every audio frame, confirms it when the user stays silent

    async def _promote(self, turn: Turn) -> None:
        """The user finished: the pending turn becomes the active one and releases its output."""
        self.pending = None
        if self.active is not None and self.active is not turn:
            await self.interrupt()
        self.active = turn
        await turn.confirm()
        if turn.task is not None and turn.task.done():
            self._finish(turn)

    async def _run(self, turn: Turn) -> None:
        try:
            await turn.run(self._messages)
        except Exception:  # a bug must not leave the session "speaking" forever
            log.exception("session %s: turn %d crashed", self.id, turn.id)
            await self.error("internal", "this turn failed; please say it again")
        if self.active is turn:
            self._finish(turn)

    def _finish(self, turn: Turn) -> None:
        if turn.transcript and turn.finished:
            self._remember(turn, turn.reply.strip())
        if self.active is turn:
            self.active = None
        self.last_turn = turn

    def _remember(self, turn: Turn, reply: str) -> None:
        assert turn.transcript is not None
        self.history.add(turn.transcript, reply)
        turn.in_history = True

    def _forget(self, turn: Turn, heard: str | None = None) -> None:
        """After an interruption: the turn's reply becomes what was heard, or (None) the turn goes."""
        if turn.in_history and self.last_turn is turn and len(self.history):
            if heard is None:
                self.history.drop_last()
                turn.in_history = False
            else:
                self.history.replace_last_reply(heard)

    async def _cancel(self, turn: Turn) -> None:
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await turn.task

    async def interrupt(self, merged: bool = False) -> None:
        """Barge-in: stop generation and speech now; keep in memory only what was heard.

        `merged`: the user had not finished after all; their turn continues and will be
        answered as a whole, so the cut reply is forgotten."""
        turn = self.active or (self.last_turn if time.perf_counter() < self._play_until else None)
        if turn is None or turn.interrupted:
            return
        turn.interrupted = True  # from here on the turn sends nothing more
        unplayed = max(0.0, self._play_until - time.perf_counter())
        sent_ms = turn.sent_samples / OUT_RATE * 1000
        played_ms = turn.played_ms if turn.played_ms is not None else max(0.0, sent_ms - unplayed * 1000)
        self._play_until = 0.0
        await self.send(Interrupted(turn_id=turn.id, played_ms=round(played_ms, 1)).dump())
        await self.send(turn.metrics())  # the timings of a cut turn are worth as much as any
        await self._cancel(turn)
        heard = turn.spoken_text(int(played_ms / 1000 * OUT_RATE))
        if merged:
            self._forget(turn)
        elif turn.transcript and self.active is turn:
            self._remember(turn, heard)
        else:
            self._forget(turn, heard)
        if self.active is turn:
            self.active = None
        self.last_turn = turn
        log.info("session %s: turn %d interrupted after %.0f ms of audio", self.id, turn.id, played_ms)

    async def close(self) -> None:
        self._closed = True
        turns, self.pending, self.active = (self.pending, self.active), None, None
        for t in turns:
            if t is not None:
                await self._cancel(t)
