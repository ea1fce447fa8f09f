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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.server.agents import Agent
from services.server.echo import EchoGuard, repeats_our_words
from services.server.endpointing import Verdict, judge, reads_complete
from services.server.history import History
from services.server.live_stt import LiveTranscriber
from services.server.turn import Payload, Turn, TurnDeps, TurnState
from shared.audio import OUT_RATE, STT_RATE, active_level, pcm16_to_float
from shared.clients import ChatClient, SttClient
from shared.config import ServerSettings
from shared.logs import TURN_LOG, user_text
from shared.metrics import INTERRUPTIONS, SESSION_ERRORS
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
    SttPartial,
    TranscriptIn,
    TranscriptPartial,
)
from shared.replicas import Replicas
from shared.speech_detector import (
    AudioSpeechDetector,
    DetectorConfig,
    EnergyClassifier,
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
    tts: Replicas
    cfg: ServerSettings


def make_detector(cfg: ServerSettings, *overrides: DetectorOverrides | None) -> tuple[AudioSpeechDetector, float]:
    """The session's detector, and the silence after which an unsure turn ends.

    The detector itself closes an utterance only after the longest wait (words and sound
    both unfinished); the session confirms earlier when the evidence allows."""
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
    cap = base.max_silence_duration
    if cfg.end_of_turn_policy != "text":
        base = base.with_overrides(max_silence_duration=max(cap, cfg.unfinished_max_silence))
    if engine == "silero":
        from shared.silero import SileroClassifier

        return AudioSpeechDetector(base, SileroClassifier()), cap  # loads an ONNX model: call off the event loop
    return AudioSpeechDetector(base), cap


async def new_detector(cfg: ServerSettings, *overrides: DetectorOverrides | None) -> tuple[AudioSpeechDetector, float]:
    return await asyncio.to_thread(make_detector, cfg, *overrides)


SEND_TIMEOUT = 10.0  # a client that reads nothing for this long is gone
TICK = 0.05  # how often time-based decisions are made when no audio arrives
# Speech judged to be our echo is not forgotten: the user may start talking over it.
ECHO_LOOK = 0.2  # s between looks at whether speech judged echo still follows our contour
ECHO_MISSES = 2  # looks in a row that do not follow it: judged again (one miss is chance)
ECHO_TAIL = 1.0  # s after our playback ends that an echo (delay + a room's reverb) may still be heard
ECHO_RELISTENS = 3  # an echo check that heard no words listens again, with more audio, this often
ECHO_RELISTEN_AFTER = 0.4  # s between those looks
ECHO_OVERTURN = 2  # checks in a row that must hear words not ours before speech judged echo is the user's
ECHO_PREROLL = 0.5  # s of audio before a re-judged onset that the user's turn keeps (their first word)
ECHO_WORDS_BACK = 0.2  # s before the contour's first miss that the words check also hears
ECHO_EPISODE = 1.5  # s: re-judged again within this, the user's words still begin where they did
# Speech over our reply this far under the user's own speaking level, in which Whisper hears no
# words, is our quiet echo (a person talking over us is not 12 dB quieter than they talked before)
ECHO_QUIET_DB = 12.0
STALL_SLACK = 0.1  # audio frames arrive every ~20 ms; a gap longer than this counts as silence


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _done(finished: object) -> str:
    return "finished" if finished else "unfinished"


class Session:
    def __init__(self, ws: WebSocket, session_id: str, init: InitMessage, agent: Agent, services: Services) -> None:
        self.ws, self.id, self.agent = ws, session_id, agent
        self.cfg = services.cfg
        self.system = init.systemPrompt or agent.systemPrompt
        self.allow_interruptions = init.allowInterruptions
        self._detector_overrides = (agent.speechDetector, init.speechDetector)
        self.detector = AudioSpeechDetector()  # replaced in start() by the session's own settings
        self.turn_cap = self.cfg.max_silence_duration  # silence that ends a turn we are unsure about
        self._neural = False  # a neural detector runs in a worker thread, not on the event loop
        self.history = History(self.cfg.history_turns, self.cfg.history_tokens)
        self.echo = EchoGuard(threshold=self.cfg.echo_threshold)
        self.deps = TurnDeps(
            stt=services.stt,
            chat=services.chat,
            tts=services.tts,
            send=self.send,
            on_audio_sent=self._on_audio_sent,
            binary_audio=init.audioOut == "binary",
            voice=init.voice or agent.voice,
            first_chunk_max_words=self.cfg.first_chunk_max_words,
        )
        self.current: Turn | None = None  # the utterance in progress: listening or speculating, output held
        self.active: Turn | None = None  # confirmed, output streaming
        self.last_turn: Turn | None = None
        self._turn_ids = 0
        self._send_lock = asyncio.Lock()
        self._odd_byte = b""
        self._play_until = 0.0  # wall clock when the client will have played all it got
        # What the speech in progress is: "normal" (the user's turn) | "ignored" (talk-over with
        # interruptions off) | "barge" (over our reply: may interrupt) | "checking" (are those our
        # words?) | "echo" (follows our contour) | "echo_words" (repeats our words); both watched
        self._utterance = "normal"
        self._echo_check: asyncio.Task[None] | None = None
        self._barge_onset = 0.0
        self._echo_look, self._echo_misses = 0.0, 0  # when the echo is next looked at; looks that missed
        self._words_from = 0  # samples into the detector's utterance where the user's words begin
        self._rejudged_at = -ECHO_EPISODE  # detector time of the last re-judgement
        self._voice_db: float | None = None  # the user's speaking level (dBFS), from their last utterance
        self._closed = False
        self._early: Turn | None = None
        self._last_audio = time.perf_counter()  # wall clock of the last audio frame
        self._input = asyncio.Lock()  # audio frames and the timer take decisions one at a time
        self._timer: asyncio.Task[None] | None = None
        self.live = LiveTranscriber(services.stt.replicas, init.language, self._on_partial) if self.cfg.streaming_stt else None
        self._words, self._words_at = "", time.perf_counter()  # the live transcript, and when it last changed
        self._words_heard = self._heard = 0.0  # stream audio (s) STT had when the words last changed, and now

    async def start(self) -> None:
        self.detector, self.turn_cap = await new_detector(self.cfg, *self._detector_overrides)
        self._neural = not isinstance(self.detector.clf, EnergyClassifier)
        self._last_audio = time.perf_counter()
        self._timer = asyncio.create_task(self._tick())

    def busy(self) -> bool:
        """A turn is being computed or spoken (a drain waits for it)."""
        return (self.current is not None and self.current.state == TurnState.SPECULATING) or self.active is not None

    async def _tick(self) -> None:
        """Decisions that must not wait for the next audio frame: a client may stop sending."""
        while not self._closed:
            await asyncio.sleep(TICK)
            if time.perf_counter() - self._last_audio > STALL_SLACK:
                async with self._input:
                    await self._check_progress()

    # ------------------------------------------------------------------ outbox

    async def send(self, payload: Payload) -> None:
        if self._closed:
            return
        async with self._send_lock:
            if self._closed:
                return
            send = self.ws.send_bytes(payload) if isinstance(payload, bytes) else self.ws.send_text(payload)
            try:
                await asyncio.wait_for(send, SEND_TIMEOUT)
            except TimeoutError:
                # The client stopped reading: what we hold for it is bounded by the socket
                # buffers; end the session rather than let it hold a turn (and memory) forever.
                log.warning("client not reading for %.0fs: closing", SEND_TIMEOUT)
                SESSION_ERRORS.labels(code="slow_client").inc()
                self._closed = True
                asyncio.create_task(self._abort())
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                # The client left (or the socket closed under us): nothing more can reach it,
                # and a turn still speaking must end quietly, not crash on its next chunk.
                log.info("client gone while sending (%s): nothing more is sent", type(exc).__name__)
                self._closed = True

    async def _abort(self) -> None:
        await self.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(1008, reason="client is not reading"), 1.0)

    def _on_audio_sent(self, chunk: np.ndarray) -> None:
        start = max(self._play_until, time.perf_counter())
        self.echo.on_output(chunk, start)
        self._play_until = start + len(chunk) / OUT_RATE

    def speaking(self) -> bool:
        return self.active is not None or time.perf_counter() < self._play_until

    def echo_audible(self) -> bool:
        """Our voice may still be coming back through the user's mic."""
        return self.active is not None or time.perf_counter() < self._play_until + ECHO_TAIL

    async def error(self, code: str, message: str, recoverable: bool = True) -> None:
        SESSION_ERRORS.labels(code=code).inc()
        await self.send(ErrorOut(code=code, message=message, recoverable=recoverable).dump())

    async def expire(self, message: str) -> None:
        """A limit of the session was reached: say so, then close."""
        await self.error("session_expired", message, recoverable=False)
        await self.close()
        with contextlib.suppress(Exception):
            await self.ws.close(1000, reason="session expired")

    async def shutdown(self) -> None:
        """The server is draining: the last message, then a close that says "restart, come back"."""
        await self.error("server_shutdown", "the server is restarting; connect again in a moment", recoverable=False)
        await self.close()
        with contextlib.suppress(Exception):
            await self.ws.close(1012, reason="server restarting")

    # ------------------------------------------------------------------ input

    async def on_audio(self, data: bytes) -> None:
        data = self._odd_byte + data
        self._odd_byte = data[-1:] if len(data) % 2 else b""  # odd-length frames: keep the byte for the next one
        x = pcm16_to_float(data)
        if x.size == 0:
            return
        now = self._last_audio = time.perf_counter()
        self.echo.on_input(x, now)
        async with self._input:  # the timer and the words check read the detector: not while it is pushed
            events = await asyncio.to_thread(self.detector.push, x) if self._neural else self.detector.push(x)
            await self._stream_utterance()
            for ev in events:
                speech_end = now - (self.detector.time - getattr(ev, "t", self.detector.time))
                await self._on_event(ev, speech_end)
            await self._check_progress()

    async def _stream_utterance(self) -> None:
        """The user's words go to live STT while they speak (not echo or talk-over we ignore)."""
        if self.live is not None and self._utterance == "normal" and self.detector.in_speech:
            await self.live.feed(self.detector.utterance_since(self._words_from + self.live.streamed))

    async def _on_partial(self, partial: SttPartial) -> None:
        turn = self.current
        self._heard = partial.heard
        if partial.text == self._words:
            return  # a pass that heard no new words
        self._words, self._words_at, self._words_heard = partial.text, time.perf_counter(), partial.heard
        if turn is not None and turn.by_words and turn.state == TurnState.SPECULATING:
            async with self._input:  # new words: the speaker was not done after all
                if turn.state == TurnState.SPECULATING:
                    await turn.listen_again()
        if turn is not None and turn.open and partial.text:
            await self.send(TranscriptPartial(turn_id=turn.id, text=partial.text, stable=partial.committed).dump())

    async def _on_event(self, ev: object, speech_end: float) -> None:
        if isinstance(ev, SpeechStarted):
            self._utterance, self._early, self._words_from = "normal", None, 0  # a new utterance continues nothing
            self._rejudged_at = -ECHO_EPISODE
            if self.speaking():
                # while we talk, speech only counts once it lasts longer than a backchannel
                # and does not follow our own voice (see _check_progress)
                self._barge(ev.t)
                return
            await self.send(SpeechStart().dump())
            self._open_turn()
        elif self._utterance != "normal":
            if isinstance(ev, UtteranceEnded):  # a backchannel, our own echo, or talk-over we ignore
                self._utterance, self._early = "normal", None
                await self._end_utterance()
        elif isinstance(ev, SpeechPaused):
            if not self.echo_audible():  # the user's own voice, with none of ours in the mix
                self._voice_db = active_level(ev.audio[self._words_from :])
            self._speculate(ev.audio[self._words_from :], speech_end)
        elif isinstance(ev, SpeechResumed):
            # the user goes on: drop the speculative answer; the turn listens on, keeping its id
            if self.current is not None and self.current.state == TurnState.SPECULATING:
                await self.current.listen_again()
            elif self._early is not None:
                if self._early.sent_samples == 0:  # nothing played yet, so this cannot be our echo
                    await self._merge_early()
                else:
                    self._barge(ev.t)
        elif isinstance(ev, UtteranceEnded):
            await self.send(SpeechEnd(duration=round(len(ev.audio) / STT_RATE, 3)).dump())
            turn = self.current
            if self._early is not None:  # already answered: the transcript read complete
                self._early = None
            elif turn is not None:
                if turn.state == TurnState.LISTENING:  # ended with no pause seen (the 30 s limit)
                    self._speculate(ev.audio[self._words_from :], speech_end, live=False)
                self._log_end(turn, f"the utterance ended ({ev.reason})")
                await self._promote(turn)
            await self._end_utterance()

    def _open_turn(self, replaces: int | None = None) -> None:
        """The user started speaking: a new turn listens."""
        if self.current is not None and self.current.open:
            self.current.end(TurnState.DROPPED)
            asyncio.create_task(self.current.cancel())
        self._turn_ids += 1
        self.current = Turn(self._turn_ids, self.deps, replaces=replaces)
        self._words, self._words_at = "", time.perf_counter()
        self._words_heard = self._heard = 0.0

    def _speculate(self, audio: np.ndarray, speech_end: float, live: bool = True, by_words: bool = False) -> None:
        """A pause: the current turn computes its answer, output held (confirmed or dropped later)."""
        turn = self.current
        if turn is None or turn.state != TurnState.LISTENING:
            return

        async def transcribe() -> str:
            text = await self.live.transcript() if live and self.live is not None else None
            return text if text is not None else await self.deps.stt.transcribe(audio)  # batch: the stream broke

        async def sounds_finished() -> float | None:
            return await self.deps.stt.end_of_turn(audio) if self.cfg.end_of_turn_policy != "text" else None

        turn.by_words = by_words
        turn.speculate(speech_end, lambda: self._run(turn, transcribe), sounds_finished)

    async def _end_utterance(self) -> None:
        if self.live is not None:
            await self.live.end_utterance()

    def _barge(self, onset: float) -> None:
        """Speech while we talk; with `_early` set it continues the utterance we answered early."""
        self._utterance = "barge" if self.allow_interruptions else "ignored"
        self._barge_onset = onset

    async def _merge_early(self) -> None:
        """The user had not finished after all: forget the early answer; their turn goes on,
        as a new turn whose transcript `replaces` the early one's."""
        early, self._early = self._early, None
        if early is None:
            return
        if self.speaking():
            await self.interrupt(merged=True)
        else:
            early.end(TurnState.MERGED)
            early.record("merged")
            self._forget(early)
        self._open_turn(replaces=early.id)

    def _silence(self) -> float:
        """Silence at the end of the open utterance, counting the time no audio has arrived."""
        stalled = time.perf_counter() - self._last_audio
        return self.detector.silence + (stalled if stalled > STALL_SLACK else 0.0)

    async def _check_progress(self) -> None:
        """Time-based decisions that are not detector events."""
        det = self.detector
        speech = det.in_speech and det.silence == 0.0
        if self._utterance == "barge" and speech and det.time - self._barge_onset >= self.cfg.backchannel_max:
            if self.echo_audible() and self.echo.is_echo():
                self._judged_echo("echo")
                log.info("speech follows our own playback: echo, ignored")
            elif self.echo_audible() and self._said():
                # not our contour, but maybe our words (reverb smears contours): STT decides
                self._utterance = "checking"
                # heard nothing: the user's (Whisper drops a person's first 0.6 s as often as a
                # quiet echo, and listening again made barge-ins over short replies too late),
                # unless it is far quieter than the user speaks (then our echo, still watched)
                self._check_words(self._barge_onset, relistens=0)
            else:
                await self._barge_in()
        elif self._utterance in ("echo", "echo_words") and speech:
            if not self.echo_audible():
                log.info("speech goes on after our playback: judged again")
                await self._rejudge(det.time - ECHO_TAIL, barge_now=True)
            elif time.perf_counter() >= self._echo_look:
                # speech the words check called ours is watched too: a user who starts talking over
                # our echo after that check would otherwise be heard only once we stop (or never)
                await self._watch_echo()
        p = self.current
        if p is None or not det.in_speech:
            return
        silence = self._silence()
        stalled = silence >= det.cfg.max_silence_duration  # the client stopped sending: the utterance is over
        # the client stopped mid-word (no pause was ever seen), or late words sent the turn back
        # to listening inside a pause the detector already reported
        if p.state == TurnState.LISTENING and (stalled or det.paused):
            self._speculate(det.utterance_since(self._words_from), time.perf_counter() - silence)
        if p.state == TurnState.LISTENING and self._words_stopped():
            self._speculate(det.utterance_since(self._words_from), self._words_at, by_words=True)
        if p.by_words:  # the room is not silent: time since the last new word stands in for silence
            silence = time.perf_counter() - self._words_at - self.cfg.words_stopped
        if p.state == TurnState.SPECULATING and (stalled or silence >= self._wait_for(p)):
            self._log_end(p, "stalled" if stalled else f"{silence * 1000:.0f} ms of silence")
            self._early = p  # promoted before the detector closed the utterance
            await self._promote(p)

    async def _barge_in(self) -> None:
        """Speech over our reply that is the user's: it interrupts, or continues the utterance we answered early."""
        self._utterance = "normal"
        if self._early is not None:  # the user went on after an early answer: one turn
            await self._merge_early()
        else:
            await self.send(SpeechStart().dump())
            await self.interrupt()
            if self.live is not None and self.live.streamed:
                await self.live.end_utterance()  # what it heard before our echo was another turn's
            self._open_turn()

    def _judged_echo(self, kind: str) -> None:
        """The speech in progress is our own voice: ignored, and watched in case the user joins in."""
        self._utterance = kind
        self._early = None  # the user's utterance ended where our echo began: nothing after continues it
        self._echo_look, self._echo_misses = time.perf_counter() + ECHO_LOOK, 0

    async def _watch_echo(self) -> None:
        """Speech judged echo must keep following our contour; if it stops, someone else
        may be talking over it (the mix follows neither voice), and it is judged again."""
        self._echo_look = time.perf_counter() + ECHO_LOOK
        self._echo_misses = 0 if self.echo.is_echo() else self._echo_misses + 1
        if self._echo_misses >= ECHO_MISSES:
            log.info("speech no longer follows our playback: judged again")
            # the contour has said no twice: the words decide, at once
            await self._rejudge(self.detector.time - ECHO_MISSES * ECHO_LOOK - ECHO_WORDS_BACK)

    async def _rejudge(self, onset: float, barge_now: bool = False) -> None:
        """Judge the speech from `onset` (detector time) again; if it is the user's, their turn
        begins a little before it, not where the detector's utterance (our echo) began."""
        det = self.detector
        if det.time - self._rejudged_at > ECHO_EPISODE:  # not the same talk-over judged once more
            self._words_from = max(self._words_from, det.sample_at(onset - ECHO_PREROLL))
        self._rejudged_at = det.time
        self._barge(onset)
        if barge_now:
            await self._barge_in()
        elif self._utterance == "barge":
            self._utterance = "checking"
            # ours after all: watched again, for the user may still be about to talk over it
            self._check_words(onset, relistens=ECHO_RELISTENS, ours="echo", overturn=ECHO_OVERTURN)

    def _quiet(self, audio: np.ndarray) -> bool:
        """Far under the user's own speaking level: our echo, more likely than the user."""
        if self._voice_db is None:
            return False
        level = active_level(audio)
        if level < self._voice_db - ECHO_QUIET_DB:
            log.info("speech over our reply is %.0f dB under the user's voice", self._voice_db - level)
            return True
        return False

    def _said(self) -> str:
        """What we have been saying (the words an echo would repeat)."""
        return " ".join(t.reply for t in {self.active, self._early, self.last_turn} if t is not None)

    def _check_words(self, onset: float, relistens: int, wait: float = 0.0, ours: str = "echo_words", overturn: int = 1) -> None:
        if self._echo_check is not None and self._echo_check is not asyncio.current_task():
            self._echo_check.cancel()  # an older check: its answer no longer matters
        self._echo_check = asyncio.create_task(self._words_check(onset, relistens, wait, ours, overturn))

    async def _words_check(self, onset: float, relistens: int, wait: float, ours: str, overturn: int) -> None:
        """Does the speech since `onset` repeat what we said? If so, the utterance becomes `ours`
        ("echo": its contour is watched again). Re-judging speech that was our echo, no words
        heard (Whisper's noise guard drops a quiet echo) means: listen again, then still echo;
        and words not ours must be heard `overturn` times, each with 0.4 s more audio: Whisper
        mishears a short stretch of our echo as other words ("n", "So what?", "I want to know.")."""
        await asyncio.sleep(wait)
        det = self.detector
        async with self._input:  # not while a frame is being pushed
            audio = det.utterance_since(det.sample_at(onset))
        failed = False
        try:
            heard = await self.deps.stt.transcribe(audio)
        except Exception as exc:  # noqa: BLE001 - unknown: the user's, as without this check
            log.warning("echo check: STT failed (%s); taken as the user's speech", exc)
            heard, failed = "", True
        async with self._input:
            if self._echo_check is not asyncio.current_task() or self._utterance != "checking":
                return  # the utterance ended meanwhile, or a newer one is being checked
            if not failed and not heard.strip() and relistens > 0:
                self._check_words(onset, relistens - 1, ECHO_RELISTEN_AFTER, ours, overturn)
            # (a larger share of ours to stay echo once re-judged took the talk-over lost from 3
            # cells of 18 to 1, but a reverberant echo at gain 0.1 then interrupted us once)
            elif not failed and ((not heard.strip() and (ours == "echo" or self._quiet(audio))) or repeats_our_words(heard, self._said())):
                if ours == "echo":  # a re-judgement (it set where the user's words begin): a talk-over
                    self._rejudged_at = det.time  # may go on, and the next look is the same episode
                self._judged_echo(ours)
                log.info("speech repeats our own words (%s): echo, ignored", user_text(heard) or "no words")
            elif not failed and overturn > 1:
                log.info("speech over our reply may be the user's (%s): listening again", user_text(heard))
                self._check_words(onset, relistens, ECHO_RELISTEN_AFTER, ours, overturn - 1)
            else:
                log.info("speech over our reply is the user's (%s)", user_text(heard))
                await self._barge_in()

    def _words_stopped(self) -> bool:
        """No new words for a while, though the detector still hears sound: other people
        talking, music, a fan. The turn must not wait for the room to fall silent."""
        return (self.live is not None and bool(self._words) and self.detector.silence == 0.0
                and time.perf_counter() - self._words_at >= self.cfg.words_stopped
                and self._heard - self._words_heard >= self.cfg.words_stopped  # and STT has listened that long
                and self.detector.utterance_samples - self._words_from >= 2 * STT_RATE)

    def _log_end(self, turn: Turn, why: str) -> None:
        log.info("turn %d: end of turn after %s (%s: words %s, language model %s, sound %s)", turn.id, why, self._verdict(turn),
                 _done(turn.transcript and reads_complete(turn.transcript)), _p(turn.end_of_turn), _p(turn.sounds_finished))

    def _verdict(self, turn: Turn) -> Verdict:
        return judge(turn, self.cfg) if turn.judged.is_set() and turn.heard.is_set() else "unsure"

    def _wait_for(self, turn: Turn) -> float:
        """How much silence ends this turn, from what its words and their sound say."""
        return {"sure": self.cfg.sure_silence, "finished": self.cfg.confirm_silence,
                "unsure": self.turn_cap, "unfinished": max(self.turn_cap, self.cfg.unfinished_max_silence)}[self._verdict(turn)]

    async def on_text(self, msg: object) -> None:
        if isinstance(msg, TranscriptIn):
            await self.interrupt()
            self._turn_ids += 1
            typed = Turn(self._turn_ids, self.deps, text=msg.text)

            async def transcribe() -> str:
                return msg.text

            typed.speculate(time.perf_counter(), lambda: self._run(typed, transcribe))
            await self._promote(typed)
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
                    self.detector, self.turn_cap = await new_detector(self.cfg, self.agent.speechDetector, msg.speechDetector)
                    self._neural = not isinstance(self.detector.clf, EnergyClassifier)

    # ------------------------------------------------------------------ turns

    def _messages(self, user: str) -> list[dict[str, str]]:
        return [*self.history.messages(self.system), {"role": "user", "content": user}]

    async def _promote(self, turn: Turn) -> None:
        """The user finished: the speculating turn becomes the active one and releases its output."""
        if self.current is turn:
            self.current = None
        if self.active is not None and self.active is not turn:
            await self.interrupt()
        self.active = turn
        await turn.confirm()
        if turn.task is None or turn.task.done():
            self._finish(turn)

    async def _run(self, turn: Turn, transcribe: Callable[[], Awaitable[str]]) -> None:
        TURN_LOG.set(turn.id)  # this task's own context: every line it logs names the turn
        try:
            await turn.run(transcribe, self._messages)
        except Exception:  # a bug must not leave the session "speaking" forever
            log.exception("turn %d crashed", turn.id)
            await self.error("internal", "this turn failed; please say it again")
        if self.active is turn:
            self._finish(turn)

    def _finish(self, turn: Turn) -> None:
        if turn.transcript and turn.finished:
            self._remember(turn, turn.reply.strip())
        turn.mark_done()
        turn.record("done" if turn.finished else "failed")
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

    async def interrupt(self, merged: bool = False) -> None:
        """Barge-in: stop generation and speech now; keep in memory only what was heard.

        `merged`: the user had not finished after all; their turn continues and will be
        answered as a whole, so the cut reply is forgotten."""
        turn = self.active or (self.last_turn if time.perf_counter() < self._play_until else None)
        if turn is None or turn.interrupted:
            return
        turn.end(TurnState.MERGED if merged else TurnState.INTERRUPTED)  # from here on it sends nothing more
        unplayed = max(0.0, self._play_until - time.perf_counter())
        sent_ms = turn.sent_samples / OUT_RATE * 1000
        played_ms = turn.played_ms if turn.played_ms is not None else max(0.0, sent_ms - unplayed * 1000)
        self._play_until = 0.0
        INTERRUPTIONS.inc()
        turn.record("merged" if merged else "interrupted")
        await self.send(Interrupted(turn_id=turn.id, played_ms=round(played_ms, 1)).dump())
        await self.send(turn.metrics())  # the timings of a cut turn are worth as much as any
        await turn.cancel()
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
        log.info("turn %d interrupted after %.0f ms of audio", turn.id, played_ms)

    async def close(self) -> None:
        self._closed = True
        for task in (self._timer, self._echo_check):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        turns, self.current, self.active = (self.current, self.active), None, None
        for t in turns:
            if t is not None:
                if t.open:
                    t.end(TurnState.DROPPED)
                await t.cancel()
        if self.live is not None:
            await self.live.close()
