"""One conversation: audio and messages in, decisions dispatched, nothing sent here.

The session moves the client's audio through the speech detector and live STT, and
hands what happens to the parts that decide: the barge-in judge (speech over our
reply: the user, a backchannel or our echo?) and the turn-taker (whose turn, and
when it ends). Everything for the client goes through the outbox, so the input path
never waits on a slow client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from services.server.agents import Agent
from services.server.echo import EchoGuard
from services.server.live_stt import LiveTranscriber
from services.server.session.barge import PREROLL, Action, BargeJudge, CheckWords, Do, Heard, Signals, UserFrom
from services.server.session.channel import Channel, Outbox
from services.server.session.detector import new_detector
from services.server.session.playout import Playout
from services.server.session.turn import TurnDeps
from services.server.session.turn_taker import TurnTaker
from services.server.tools import ToolRunner
from shared.audio import STT_RATE, active_level, pcm16_to_float
from shared.clients import Words
from shared.logs import user_text
from shared.metrics import SESSION_ERRORS
from shared.protocol import (
    ConfigIn,
    ErrorOut,
    InitMessage,
    InterruptIn,
    PlaybackIn,
    SpeechEnd,
    SpeechStart,
    SttPartial,
    ToolResultIn,
    TranscriptIn,
    TranscriptPartial,
)
from shared.speech_detector import AudioSpeechDetector, EnergyClassifier, SpeechPaused, SpeechResumed, SpeechStarted, UtteranceEnded

if TYPE_CHECKING:
    from services.server.upstreams import Upstreams

log = logging.getLogger("server.session")

TICK = 0.05  # how often time-based decisions are made when no audio arrives
# The user going on within this long (s) of our early answer starting to play had not finished:
# one turn, answered as a whole. Later, the answer stands and what they say is a new turn (they
# heard it: a quick reply to a short answer must not be merged into the sentence before it).
GOES_ON_WITHIN = 1.5
STALL_SLACK = 0.1  # audio frames arrive every ~20 ms; a gap longer than this counts as silence
CHECK_PREROLL = 0.1  # s before the onset a words check also hears (the detector's onset clips the first phoneme)
GOING_ON_GAP = 0.2  # s: speech over our reply that has been silent this long has stopped (gaps between words are shorter)


class Session:
    def __init__(self, channel: Channel, session_id: str, init: InitMessage, agent: Agent, ups: Upstreams,
                 clock: Callable[[], float] = time.perf_counter, resumable: bool = False) -> None:
        self.id, self.agent, self.ups, self.cfg, self.clock = session_id, agent, ups, ups.cfg, clock
        self._detector_overrides = (agent.speechDetector, init.speechDetector)
        self.detector = AudioSpeechDetector()  # replaced in start() by the session's own settings
        self._neural = False  # a neural detector runs in a worker thread, not on the event loop
        self.resumable = resumable  # a dropped connection parks the session (see resume.py) instead of ending it
        self.outbox = Outbox(channel, self._client_gone, hold_on_drop=resumable)
        self.detached = False  # the connection dropped; the client may come back
        self.connection = 0  # bumped at each (re)connection: a handler whose connection was taken over lets go
        self.started = time.monotonic()  # the duration limit counts across reconnections
        self.echo = EchoGuard(threshold=self.cfg.echo_threshold)
        self.playout = Playout(self.echo, clock)
        self.judge = BargeJudge(self.cfg.backchannel_max, init.allowInterruptions, self.cfg.barge_pause)
        self.tools = ToolRunner(agent.tools, self.outbox.put, self.cfg.tool_timeout) if agent.tools else None
        deps = TurnDeps(chat=ups.chat, open_speech=ups.open_speech, outbox=self.outbox, on_audio_sent=self.playout.on_sent,
                        voice=init.voice or agent.voice, first_chunk_max_words=self.cfg.first_chunk_max_words, tools=self.tools)
        self.turns = TurnTaker(deps, self.playout, self.cfg, init.systemPrompt or agent.systemPrompt, on_open=self._new_words, clock=clock)
        self.live = LiveTranscriber(ups.stt.replicas, init.language, self._on_partial) if self.cfg.streaming_stt else None
        self._odd_byte = b""
        self._closed = False
        self._last_audio = clock()  # wall clock of the last audio frame
        self._input = asyncio.Lock()  # audio frames, the timer and the words check decide one at a time
        self._timer: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None  # the words check in progress
        self._words_from = 0  # samples into the detector's utterance where the user's words begin
        self._onset_t = 0.0  # detector time the utterance's speech began (pre-roll not included)
        self._new_words()

    def _new_words(self) -> None:
        """A new turn: its live transcript starts empty."""
        self._words, self._words_at = "", self.clock()  # the live transcript, and when it last changed
        self._words_heard = self._heard = 0.0  # stream audio (s) STT had when the words last changed, and now

    async def start(self) -> None:
        self.outbox.start()
        self.detector, self.turns.turn_cap = await new_detector(self.cfg, *self._detector_overrides)
        self._neural = not isinstance(self.detector.clf, EnergyClassifier)
        self._last_audio = self.clock()
        self._timer = asyncio.create_task(self._tick())

    @property
    def closed(self) -> bool:
        return self._closed

    def busy(self) -> bool:
        return self.turns.busy() and not self.detached  # a parked turn cannot finish: a drain does not wait for it

    def detach(self) -> None:
        """The connection dropped: output waits, and silence is not counted (no audio can come)."""
        self.detached = True
        self.outbox.go_offline()

    def attach(self) -> None:
        """The client is back (its missed frames were sent again): output and the clock go on."""
        self.detached = False
        self._last_audio = self.clock()
        self.outbox.go_online()

    async def _tick(self) -> None:
        """Decisions that must not wait for the next audio frame: a client may stop sending."""
        while not self._closed:
            await asyncio.sleep(TICK)
            if self.clock() - self._last_audio > STALL_SLACK and not self.detached:
                async with self._input:
                    await self._check_progress()

    # ------------------------------------------------------------------ to the client

    def send(self, msg: object) -> None:
        self.outbox.put(msg)  # type: ignore[arg-type]

    async def error(self, code: str, message: str, recoverable: bool = True) -> None:
        SESSION_ERRORS.labels(code=code).inc()
        self.outbox.put(ErrorOut(code=code, message=message, recoverable=recoverable))

    async def expire(self, message: str) -> None:
        """A limit of the session was reached: say so, then close."""
        await self.error("session_expired", message, recoverable=False)
        await self.close(1000, "session expired")

    async def shutdown(self) -> None:
        """The server is draining: the last message, then a close that says "restart, come back"."""
        if self.detached:
            await self.close()  # nobody to tell
            return
        await self.error("server_shutdown", "the server is restarting; connect again in a moment", recoverable=False)
        await self.close(1012, "server restarting")

    def _client_gone(self) -> None:
        if self.resumable:
            self.detach()  # the connection's handler parks the session when its socket reports the drop
        elif not self._closed:
            asyncio.create_task(self.close())

    # ------------------------------------------------------------------ input

    async def on_audio(self, data: bytes) -> None:
        """16 kHz int16 LE mono, in frames of any size."""
        data = self._odd_byte + data
        self._odd_byte = data[-1:] if len(data) % 2 else b""  # odd-length frames: keep the byte for the next one
        x = np.frombuffer(data[: len(data) // 2 * 2], "<i2")  # int16 from here to STT: no conversions on the way
        if x.size == 0 or self._closed:
            return
        now = self._last_audio = self.clock()
        self.echo.on_input(pcm16_to_float(x), now)  # the echo guard compares loudness contours: float
        async with self._input:  # the timer and the words check read the detector: not while it is pushed
            events = await asyncio.to_thread(self.detector.push, x) if self._neural else self.detector.push(x)
            await self._stream_utterance()
            for ev in events:
                await self._on_event(ev, now - (self.detector.time - getattr(ev, "t", self.detector.time)))
            await self._check_progress()

    async def _stream_utterance(self) -> None:
        """The user's words go to live STT while they speak (not echo or talk-over we ignore)."""
        if self.live is not None and self.judge.heard == "user" and self.detector.in_speech:
            await self.live.feed(self.detector.utterance_since(self._words_from + self.live.streamed))

    async def _on_partial(self, partial: SttPartial) -> None:
        turn = self.turns.current
        self._heard = partial.heard
        if partial.text == self._words:
            return  # a pass that heard no new words
        self._words, self._words_at, self._words_heard = partial.text, self.clock(), partial.heard
        if turn is not None and turn.by_words:
            async with self._input:  # new words: the speaker was not done after all
                if self.turns.current is turn:
                    await self.turns.user_went_on()
        if turn is not None and turn.open and partial.text:
            self.send(TranscriptPartial(turn_id=turn.id, text=partial.text, stable=partial.committed))

    async def _on_event(self, ev: object, speech_end: float) -> None:
        turns = self.turns
        if isinstance(ev, SpeechStarted):
            self.judge.speech_started()
            turns.early, self._words_from, self._onset_t = None, 0, ev.t  # a new utterance continues nothing
            if turns.speaking():  # while we talk: the user, a backchannel or our echo? (barge.py)
                await self._act_all(self.judge.over_reply(ev.t))
                return
            self.send(SpeechStart())
            turns.open_turn()
        elif self.judge.heard != "user":
            if isinstance(ev, UtteranceEnded):  # a backchannel, our own echo, or talk-over we ignore
                await self._act_all(self.judge.utterance_ended())
                turns.early = None
                await self._end_utterance()
        elif isinstance(ev, SpeechPaused):
            if not turns.echo_audible():  # the user's own voice, with none of ours in the mix
                self.judge.voice_db = active_level(ev.audio[self._words_from :])
            self._speculate(ev.audio[self._words_from :], speech_end)
        elif isinstance(ev, SpeechResumed):
            # the user goes on: drop the speculative answer; the turn listens on, keeping its id
            if not await turns.user_went_on() and turns.early is not None:
                if self.playout.sent_samples(turns.early.id) == 0:  # nothing played yet: cannot be our echo
                    await turns.merge_early()
                else:  # our answer has only just begun: very likely the user going on, so it stops at once
                    started = self.playout.started_at(turns.early.id)
                    await self._act_all(self.judge.over_reply(ev.t, at_once=started is None or self.clock() - started <= GOES_ON_WITHIN))
        elif isinstance(ev, UtteranceEnded):
            self.send(SpeechEnd(duration=round(len(ev.audio) / STT_RATE, 3)))
            await turns.utterance_ended(ev.reason, lambda: self._speculate(ev.audio[self._words_from :], speech_end, live=False))
            await self._end_utterance()

    def _speculate(self, audio: np.ndarray, speech_end: float, live: bool = True, by_words: bool = False) -> None:
        stt = self.ups.stt

        async def transcribe() -> Words | str:
            words = await self.live.transcript() if live and self.live is not None else None
            return words if words is not None else await stt.transcribe_words(audio)  # batch: the stream broke

        async def sounds_finished() -> float | None:
            return await stt.end_of_turn(audio)

        self.turns.speculate(speech_end, transcribe, sounds_finished, by_words, speech_s=self._spoken(len(audio) / STT_RATE))

    def _spoken(self, audio_s: float) -> float:
        """Seconds of this turn's speech, from its onset (or where the user's words began) to the
        last voiced hop, in detector time: the learned end of turn's speaking rate."""
        det = self.detector
        if not det.in_speech:  # the utterance has closed (it never paused): its audio less the pre-roll
            return max(audio_s - det.cfg.pre_roll, 0.25)
        start = max(self._onset_t, det.time - (det.utterance_samples - self._words_from) / STT_RATE)
        return max(det.time - det.silence - start, 0.25)

    async def _end_utterance(self) -> None:
        if self.live is not None:
            await self.live.end_utterance()

    def _silence(self) -> float:
        """Silence at the end of the open utterance, counting the time no audio has arrived."""
        stalled = self.clock() - self._last_audio
        return self.detector.silence + (stalled if stalled > STALL_SLACK else 0.0)

    async def _check_progress(self) -> None:
        """Time-based decisions that are not detector events: barge-in and echo, then the end of turn."""
        det, turns = self.detector, self.turns
        s = Signals(t=det.time, now=self.clock(), speech=det.in_speech and det.silence == 0.0,
                    echo_audible=turns.echo_audible(), follows_contour=None, said=turns.said())
        if self.judge.needs_contour(s):
            s.follows_contour = self.echo.is_echo()
        await self._act_all(self.judge.tick(s))
        if turns.paused is not None and self.judge.heard != Heard.HELD:  # every way out of HELD decides; this is a guard
            log.warning("turn %d was left paused (speech over it judged %s): it goes on", turns.paused.id, self.judge.heard)
            turns.resume()
        p = turns.current
        if p is None or not det.in_speech:
            return
        silence = self._silence()
        stalled = silence >= det.cfg.max_silence_duration  # the client stopped sending: the utterance is over
        # the client stopped mid-word (no pause was ever seen), or late words sent the turn back
        # to listening inside a pause the detector already reported
        if p.state == "listening" and (stalled or det.paused):
            self._speculate(det.utterance_since(self._words_from), self.clock() - silence)
        if p.state == "listening" and self._words_stopped():
            self._speculate(det.utterance_since(self._words_from), self._words_at, by_words=True)
        if p.by_words:  # the room is not silent: time since the last new word stands in for silence
            silence = self.clock() - self._words_at - self.cfg.words_stopped
        await turns.end_if_due(silence, stalled)

    def _words_stopped(self) -> bool:
        """No new words for a while, though the detector still hears sound: other people
        talking, music, a fan. The turn must not wait for the room to fall silent."""
        return (self.live is not None and bool(self._words) and self.detector.silence == 0.0
                and self.clock() - self._words_at >= self.cfg.words_stopped
                and self._heard - self._words_heard >= self.cfg.words_stopped  # and STT has listened that long
                and self.detector.utterance_samples - self._words_from >= 2 * STT_RATE)

    # ------------------------------------------------------------------ speech over our reply

    async def _act_all(self, actions: list[Action]) -> None:
        for action in actions:
            await self._act(action)

    async def _act(self, action: Action) -> None:
        if action is Do.PAUSE:
            self.turns.pause()
        elif action is Do.RESUME:
            self.turns.early = None  # not the user going on: an answer given early stands
            self.turns.resume()
        elif action is Do.BARGE_IN:
            await self._barge_in()
        elif action is Do.ECHO:
            self.turns.early = None  # the user's utterance ended where our echo began: nothing after continues it
            log.info("speech over our reply is our own voice (%s): ignored", self.judge.heard)
        elif isinstance(action, CheckWords):
            if self._check is not None and self._check is not asyncio.current_task():
                self._check.cancel()  # an older check: its answer no longer matters
            self._check = asyncio.create_task(self._check_words(action))
        elif isinstance(action, UserFrom):
            self._words_from = max(self._words_from, self.detector.sample_at(action.t))

    async def _barge_in(self) -> None:
        """Speech over our reply that is the user's: it interrupts, or continues the utterance we answered early."""
        early = self.turns.early
        if early is not None:
            started = self.playout.started_at(early.id)
            resumed = self.clock() - (self.detector.time - self.judge.onset)  # wall clock the user went on
            if started is None or resumed - started <= GOES_ON_WITHIN:  # the user went on after an early answer: one turn
                await self.turns.merge_early()
                return
            # they had heard our answer for a while: it stands, and their words from here are a new turn
            log.info("the user went on %.1f s into the answer to turn %d: a new turn", resumed - started, early.id)
            self.turns.early = None
        # the detector's utterance may have begun before the talk-over (the sentence we answered early,
        # our echo): the user's words begin with it
        self._words_from = max(self._words_from, self.detector.sample_at(self.judge.onset - PREROLL))
        self.send(SpeechStart())
        await self.turns.interrupt()
        if self.live is not None and self.live.streamed:
            await self.live.end_utterance()  # what it heard before our echo was another turn's
        self.turns.open_turn()

    def _drop_talk_over(self) -> None:
        """The client cut the reply itself (typed, Stop): speech over it no longer decides anything."""
        if self.judge.heard != Heard.USER:
            self.judge.utterance_ended()
        if self._check is not None:
            self._check.cancel()

    async def _check_words(self, check: CheckWords) -> None:
        """Transcribe the speech over our reply (outside the input lock) and let the judge decide."""
        await asyncio.sleep(check.wait)
        det = self.detector
        async with self._input:  # not while a frame is being pushed
            audio = det.utterance_since(det.sample_at(check.onset - CHECK_PREROLL))
        words: str | None
        try:
            words = await self.ups.stt.transcribe(audio)
        except Exception as exc:  # noqa: BLE001 - unknown: the user's, as without this check
            log.warning("echo check: STT failed (%s); taken as the user's speech", exc)
            words = None
        async with self._input:
            if self._check is not asyncio.current_task():
                return  # a newer check was started
            level = active_level(audio)
            going_on = det.in_speech and self._silence() < GOING_ON_GAP  # a client that stopped sending has stopped
            actions = self.judge.heard_words(check, words, self.turns.said(), level, det.time, self.clock(), going_on)
            if Do.BARGE_IN in actions:
                log.info("speech over our reply is the user's (%s)", user_text(words or ""))
            elif Do.RESUME in actions:
                log.info("speech over our reply (%s, %s) is not the user's turn: %s", user_text(words or ""),
                         "going on" if going_on else "over", self.judge.heard)
            await self._act_all(actions)

    # ------------------------------------------------------------------ messages

    async def on_text(self, msg: object) -> None:
        if isinstance(msg, TranscriptIn):
            async with self._input:
                self._drop_talk_over()
                await self.turns.typed(msg.text)
        elif isinstance(msg, PlaybackIn):
            self.turns.ack(msg.turn_id, msg.played_ms)
        elif isinstance(msg, ToolResultIn):
            if self.tools is None or not self.tools.result(msg):
                await self.error("unknown_tool_call", f"no tool call {msg.call_id!r} is waiting for a result (late, or never made)")
        elif isinstance(msg, InterruptIn):
            async with self._input:
                self._drop_talk_over()
                await self.turns.interrupt()
        elif isinstance(msg, ConfigIn):
            if msg.allowInterruptions is not None:
                self.judge.allow_interruptions = msg.allowInterruptions
            if msg.voice is not None:
                self.turns.deps.voice = msg.voice
            if msg.speechDetector is not None:
                if self.detector.in_speech:
                    await self.error("config_deferred", "speech detector settings change between utterances; try again")
                else:
                    self.detector, self.turns.turn_cap = await new_detector(self.cfg, self.agent.speechDetector, msg.speechDetector)
                    self._neural = not isinstance(self.detector.clf, EnergyClassifier)

    async def close(self, code: int | None = None, reason: str = "") -> None:
        """End the session; with `code`, what is queued goes out first, then the transport closes."""
        if self._closed:
            return
        self._closed = True
        for task in (self._timer, self._check):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self.turns.close()
        if self.live is not None:
            await self.live.close()
        await self.outbox.close(code, reason)
