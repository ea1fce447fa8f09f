"""Whose turn it is: the user's turn in progress, the reply being spoken, and the one before.

The turn-taker owns the turns and the conversation memory. The session tells it what
the user did (started, paused, went on, stopped, barged in); it opens turns, asks them
to speculate, confirms the one whose end came, and interrupts the one being spoken.
Each `Turn` reports how its pipeline ended (`Outcome`); the turn-taker then finishes
it (remembered in history) once it is both confirmed and done.

    current  the user's utterance: LISTENING, or SPECULATING (answer computed, held)
    early    a turn confirmed before the detector closed its utterance (the user may go on)
    active   confirmed, streaming to the client
    last     the turn before: its audio may still be playing
    paused   the reply the client stopped playing for speech over it: cut or resumed next

Times are `clock()` seconds (perf_counter; a fake in tests/test_turn_taker.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from services.server.endpointing import Verdict, judge, reads_complete
from services.server.eot_model import EndOfTurnModel, EotCues
from services.server.history import History
from services.server.session.playout import Playout
from services.server.session.turn import Outcome, Prompt, Transcriber, Turn, TurnDeps, TurnState
from shared.audio import OUT_RATE
from shared.config import ServerSettings
from shared.metrics import INTERRUPTIONS, PAUSES, RESUMES
from shared.protocol import Interrupted, Metrics, Resumed

log = logging.getLogger("server.session")

Sounds = Callable[[], Awaitable[float | None]]


class TurnTaker:
    def __init__(self, deps: TurnDeps, playout: Playout, cfg: ServerSettings, system: str, *,
                 turn_cap: float | None = None, on_open: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.deps, self.playout, self.cfg, self.system = deps, playout, cfg, system
        self.turn_cap = cfg.max_silence_duration if turn_cap is None else turn_cap  # silence that ends an unsure turn
        self._on_open, self.clock = on_open, clock
        self.history = History(cfg.history_turns, cfg.history_tokens)
        self.current: Turn | None = None
        self.early: Turn | None = None
        self.active: Turn | None = None
        self.last: Turn | None = None
        self.paused: Turn | None = None
        self._paused_ms = 0.0  # how much of the paused turn the client had played
        self._ids = 0
        self._remembered: int | None = None  # the turn whose exchange was last added to the history
        self._model = EndOfTurnModel.shipped() if cfg.end_of_turn_policy == "learned" else None

    # ---------------------------------------------------------------- what is going on

    def speaking(self) -> bool:
        """A reply is being produced, or the client is still playing one."""
        return self.active is not None or self.paused is not None or self.playout.playing()

    def echo_audible(self) -> bool:
        """Our voice may still be coming back through the user's mic."""
        return self.active is not None or self.playout.echo_possible()

    def busy(self) -> bool:
        """A turn is being computed or spoken (a drain waits for it)."""
        return (self.current is not None and self.current.state == TurnState.SPECULATING) or self.active is not None

    def said(self) -> str:
        """What we have been saying (the words an echo would repeat)."""
        return " ".join(t.reply for t in {self.active, self.early, self.last} if t is not None)

    def prompt(self) -> Prompt:
        return self.history.messages(self.system)

    # ---------------------------------------------------------------- the user's turn

    def open_turn(self, replaces: int | None = None) -> Turn:
        """The user started speaking: a new turn listens (an open one is dropped)."""
        if self.current is not None and self.current.open:
            self.current.end(TurnState.DROPPED)
            asyncio.create_task(self.current.cancel())
        self._ids += 1
        self.current = Turn(self._ids, self.deps, self._ended, replaces=replaces)
        self._on_open()
        return self.current

    def speculate(self, speech_end: float, transcribe: Transcriber, sounds: Sounds | None, by_words: bool = False,
                  speech_s: float = 0.0) -> None:
        """A pause: the listening turn computes its answer, output held; `speech_s`: how long they have spoken."""
        turn = self.current
        if turn is not None and turn.state == TurnState.LISTENING:
            turn.speculate(speech_end, transcribe, self.prompt(), sounds if self.cfg.end_of_turn_policy != "text" else None, by_words,
                           speech_s)

    async def user_went_on(self) -> bool:
        """The user goes on after a pause: a speculating turn listens again (True), keeping its id."""
        if self.current is not None and self.current.state == TurnState.SPECULATING:
            await self.current.listen_again()
            return True
        return False

    def wait_for(self, turn: Turn) -> float:
        """How much silence ends this turn, from what its words and their sound say."""
        if self._model is not None:
            if not _cues_in(turn):
                return self.turn_cap
            if turn.learned_wait is None:  # the cues are in: the model's wait, worked out once
                cues = EotCues(turn.transcript, turn.end_of_turn, turn.sounds_finished, turn.speech_s, turn.sentence_end)
                turn.learned_wait = self._model.wait_ms(cues) / 1000
            return turn.learned_wait
        return {"sure": self.cfg.sure_silence, "finished": self.cfg.confirm_silence,
                "unsure": self.turn_cap, "unfinished": max(self.turn_cap, self.cfg.unfinished_max_silence)}[self.verdict(turn)]

    def verdict(self, turn: Turn) -> Verdict:
        return judge(turn, self.cfg) if _cues_in(turn) else "unsure"

    async def end_if_due(self, silence: float, stalled: bool) -> bool:
        """The speculating turn's silence is long enough (or the client stopped): it is
        confirmed before the detector closes the utterance (`early`: the user may go on)."""
        turn = self.current
        if turn is None or turn.state != TurnState.SPECULATING or not (stalled or silence >= self.wait_for(turn)):
            return False
        self.log_end(turn, "stalled" if stalled else f"{silence * 1000:.0f} ms of silence")
        self.early = turn
        await self.promote(turn)
        return True

    async def utterance_ended(self, reason: str, speculate: Callable[[], None]) -> None:
        """The detector closed the utterance; `speculate` starts a turn that never paused (the 30 s limit)."""
        turn = self.current
        if self.early is not None:  # already answered: the transcript read complete
            self.early = None
        elif turn is not None:
            if turn.state == TurnState.LISTENING:
                speculate()
            self.log_end(turn, f"the utterance ended ({reason})")
            await self.promote(turn)

    async def typed(self, text: str) -> None:
        """A typed message: a whole turn at once."""
        await self.interrupt()
        self._ids += 1
        turn = Turn(self._ids, self.deps, self._ended, text=text)

        async def transcribe() -> str:
            return text

        turn.speculate(self.clock(), transcribe, self.prompt())
        await self.promote(turn)

    def log_end(self, turn: Turn, why: str) -> None:
        words = "finished" if turn.transcript and reads_complete(turn.transcript) else "unfinished"
        how = self.verdict(turn) if turn.learned_wait is None else f"learned, wait {turn.learned_wait * 1000:.0f} ms"
        log.info("turn %d: end of turn after %s (%s: words %s, sentence end %s, language model %s, sound %s)", turn.id, why,
                 how, words, _p(turn.sentence_end), _p(turn.end_of_turn), _p(turn.sounds_finished))

    # ---------------------------------------------------------------- the reply

    async def promote(self, turn: Turn) -> None:
        """The user finished: the turn becomes the active one and releases its output."""
        if self.current is turn:
            self.current = None
        if self.active is not None and self.active is not turn:
            await self.interrupt()
        self.active = turn
        turn.confirm()
        if turn.task is None or turn.outcome is not None:
            self._finish(turn)

    def _ended(self, turn: Turn, outcome: Outcome) -> None:
        """A turn's pipeline ended; a confirmed one is finished now (else at its confirmation,
        or once it is resumed)."""
        if self.active is turn and self.paused is not turn:
            self._finish(turn)

    def _finish(self, turn: Turn) -> None:
        if turn.transcript and turn.finished:
            self._remember(turn, turn.reply.strip())
        turn.mark_done()
        turn.record("done" if turn.finished else "failed")
        if self.active is turn:
            self.active = None
        self.last = turn

    def ack(self, turn_id: int, played_ms: float) -> None:
        """A playback ack; one for a cut turn may still be in flight: it must not restart the play clock."""
        if any(t is not None and t.id == turn_id and not t.interrupted and t is not self.paused for t in (self.active, self.last)):
            self.playout.ack(turn_id, played_ms)

    def pause(self) -> None:
        """Speech over our reply that may be the user's: the client stops playing it now; the
        words then decide whether it is cut (`interrupt`) or goes on (`resume`)."""
        turn = self._speaking_turn()
        if self.paused is not None or turn is None or not turn.pause():
            return
        PAUSES.inc()
        self.paused, self._paused_ms = turn, self.playout.stop(turn.id, echo_tail=True)
        self.deps.outbox.put(Interrupted(turn_id=turn.id, played_ms=round(self._paused_ms, 1)))
        log.info("turn %d paused after %.0f ms of audio: speech over it", turn.id, self._paused_ms)

    def resume(self) -> None:
        """It was not the user's words: the paused reply goes on from where the client stopped."""
        turn, self.paused = self.paused, None
        if turn is None or turn.state != TurnState.PAUSED:
            return
        played = round(self._paused_ms / 1000 * OUT_RATE)
        self.playout.rewind(turn.id, played)
        self.deps.outbox.put(Resumed(turn_id=turn.id, from_ms=round(self._paused_ms, 1)))
        turn.resume(played)
        RESUMES.inc()
        log.info("turn %d resumed from %.0f ms: the speech over it was not the user's words", turn.id, self._paused_ms)
        if self.active is turn and turn.outcome is not None:
            self._finish(turn)

    async def interrupt(self, merged: bool = False) -> None:
        """Barge-in: stop generation and speech now; keep in memory only what was heard.

        `merged`: the user had not finished after all; their turn continues and will be
        answered as a whole, so the cut reply is forgotten."""
        paused, self.paused = self.paused, None
        turn = paused or self._speaking_turn()
        if turn is None or turn.interrupted:
            return
        turn.end(TurnState.MERGED if merged else TurnState.INTERRUPTED)  # from here on it sends nothing more
        INTERRUPTIONS.inc()
        turn.record("merged" if merged else "interrupted")
        if turn is paused:  # the client stopped playing it already
            played_ms = self._paused_ms
            self.playout.stop(turn.id)
        else:
            played_ms = self.playout.stop(turn.id)
            self.deps.outbox.put(Interrupted(turn_id=turn.id, played_ms=round(played_ms, 1)))
        self.deps.outbox.put(Metrics(turn_id=turn.id, stages=turn.stages()))  # a cut turn's timings are worth as much
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
        self.last = turn
        log.info("turn %d interrupted after %.0f ms of audio", turn.id, played_ms)

    def _speaking_turn(self) -> Turn | None:
        """The reply being produced, or the one the client is still playing."""
        return self.active or (self.last if self.playout.playing() else None)

    async def merge_early(self) -> None:
        """The user had not finished after all: forget the early answer; their turn goes on,
        as a new turn whose transcript `replaces` the early one's."""
        early, self.early = self.early, None
        if early is None:
            return
        if self.speaking():
            await self.interrupt(merged=True)
        else:
            early.end(TurnState.MERGED)
            early.record("merged")
            self._forget(early)
        self.open_turn(replaces=early.id)

    # ---------------------------------------------------------------- memory

    def _remember(self, turn: Turn, reply: str) -> None:
        assert turn.transcript is not None
        self.history.add(turn.transcript, reply)
        self._remembered = turn.id

    def _forget(self, turn: Turn, heard: str | None = None) -> None:
        """After an interruption: the turn's reply becomes what was heard, or (None) the turn goes."""
        if self._remembered == turn.id and self.last is turn and len(self.history):
            if heard is None:
                self.history.drop_last()
                self._remembered = None
            else:
                self.history.replace_last_reply(heard)

    async def close(self) -> None:
        turns, self.current, self.active, self.early, self.paused = (self.current, self.active), None, None, None, None
        for t in turns:
            if t is not None:
                if t.open:
                    t.end(TurnState.DROPPED)
                await t.cancel()


def _cues_in(turn: Turn) -> bool:
    """The words, the language model's reading and the sound's are known (or known to be missing)."""
    return turn.judged.is_set() and turn.heard.is_set()


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
