"""Speech heard while we talk: the user barging in, a backchannel, or our own echo?

A pure judge: it holds what the speech in progress is (`Heard`) and, told what the
session observes (`Signals`, a words check's result), returns what to do. It never
touches the socket, the turns or the clock itself, so every path is testable with
made-up times (tests/test_barge.py).

- Speech over our reply that lasts `pause_after` (0.25 s) and does not follow our loudness
  contour pauses the reply at once (the client is told `interrupted`: a person stops within
  ~250 ms of being talked over). Speech that follows it is our echo, still watched.
- A words check then decides, once the speech has lasted `backchannel_max` (0.6 s): words
  of the user's cut the reply (barge in); our own words, a backchannel ("mhm", "yeah"), a
  cough or noise that stopped, and no words far quieter than the user speaks let it go on
  from where it stopped (`Do.RESUME`: LiveKit's "false interruption").
- The user going on within moments of an answer given early pauses it at once (unless our
  own voice has come back in this session: on a speakerphone our echo's onset would do it).
- Speech judged echo keeps being watched: when it stops following our contour twice in
  a row, or goes on after our playback ended, it is judged again; re-judged speech is
  the user's only when two checks 0.4 s apart hear words not ours (Whisper mishears a
  short stretch of our echo as other words: "n", "So what?").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from services.server.echo import repeats_our_words
from shared.wer import normalise

LOOK = 0.2  # s between looks at whether speech judged echo still follows our contour
MISSES = 2  # looks in a row that do not follow it: judged again (one miss is chance)
PAUSE_AFTER = 0.25  # s of speech over our reply, not our echo, that pauses it
SETTLE = 0.3  # s after a pause for our echo to die away in the mic (its delay, a room's tail)
TAIL = 1.0  # s after our playback ends that an echo may still be heard
RELISTENS = 3  # a re-judging check that heard no words listens again, with more audio, this often
RELISTEN_AFTER = 0.4  # s between those looks
OVERTURN = 2  # checks in a row that must hear words not ours before speech judged echo is the user's
PREROLL = 0.5  # s of audio before a re-judged onset that the user's turn keeps (their first word)
WORDS_BACK = 0.2  # s before the contour's first miss that the words check also hears
EPISODE = 1.5  # s: re-judged again within this, the user's words still begin where they did
# Speech over our reply this far under the user's own speaking level, in which Whisper hears no
# words, is our quiet echo (a person talking over us is not 12 dB quieter than they talked before)
QUIET_DB = 12.0
# words that acknowledge without taking the turn (normalised: lower case, no punctuation)
BACKCHANNELS = frozenset({"mhm", "mm", "mmm", "hmm", "hm", "mmhmm", "uh", "huh", "uhhuh", "um", "ah", "aha", "oh",
                          "yeah", "yes", "yep", "yup", "ok", "okay", "right", "sure", "alright", "i", "see"})


# one word over our reply that does take the turn (any other lone word that has stopped is a
# backchannel: Whisper hears a clipped "yeah" as "year", "here", "ear")
TAKES_TURN = frozenset({"stop", "wait", "no", "nope", "hold", "hey", "sorry", "pardon", "what", "excuse", "actually", "but"})


def only_backchannel(words: str) -> bool:
    return _backchannel(normalise(words))


def _backchannel(said: list[str]) -> bool:
    return bool(said) and len(said) <= 3 and all(w in BACKCHANNELS for w in said)


def minor(words: str, going_on: bool) -> bool:
    """Heard over our reply, this does not take the turn: no words, a backchannel, or one word
    (not "stop", "wait" ...) that has already stopped."""
    said = normalise(words)
    return not said or _backchannel(said) or (not going_on and len(said) == 1 and said[0] not in TAKES_TURN)


class Heard(StrEnum):
    USER = "user"  # the user's turn (or nothing)
    IGNORED = "ignored"  # talk-over while interruptions are off
    BARGE = "barge"  # over our reply: interrupts once it outlasts a backchannel
    HELD = "held"  # our reply is paused: a words check decides whether it is cut or goes on
    CHECKING = "checking"  # a words check decides whether it is ours (reply not paused)
    BACKCHANNEL = "backchannel"  # "mhm", a cough, noise: our reply went on; ignored
    ECHO = "echo"  # follows our contour: ignored, watched
    ECHO_WORDS = "echo_words"  # repeats our words: ignored, watched


class Do(StrEnum):
    PAUSE = "pause"  # maybe the user: the client stops playing our reply now, the words decide
    RESUME = "resume"  # not the user's words after all: the paused reply goes on where it stopped
    BARGE_IN = "barge_in"  # the user's speech: interrupt (or continue the utterance answered early)
    ECHO = "echo"  # our own voice: ignored (an utterance answered early ended where it began)


@dataclass(frozen=True)
class CheckWords:
    """Transcribe the speech since `onset` (detector time) after `wait` s, then call `heard()`."""

    onset: float
    wait: float = 0.0
    relistens: int = 0
    ours: Heard = Heard.ECHO_WORDS  # what the speech is if the words are ours
    overturn: int = 1  # checks that must hear words not ours
    continuation: bool = False  # the user going on with a sentence we answered early: speech that stopped is not that


@dataclass(frozen=True)
class UserFrom:
    """The user's words begin here (detector time), not where the detector's utterance (our echo) began."""

    t: float


Action = Do | CheckWords | UserFrom


@dataclass
class Signals:
    """What the session sees at a tick."""

    t: float  # detector time
    now: float  # wall clock
    speech: bool  # voiced right now
    echo_audible: bool  # our voice may still be in the mic
    follows_contour: bool | None  # the echo guard's verdict, when asked (None: not computed)
    said: str  # the words we have been saying


class BargeJudge:
    def __init__(self, backchannel_max: float, allow_interruptions: bool = True, pause_after: float = PAUSE_AFTER) -> None:
        self.backchannel_max, self.allow_interruptions = backchannel_max, allow_interruptions
        self.pause_after = min(pause_after, backchannel_max)
        self.heard = Heard.USER
        self.onset = 0.0  # detector time the speech over our reply began
        self.voice_db: float | None = None  # the user's speaking level (dBFS), from their last utterance
        self._look, self._misses = 0.0, 0  # when the echo is next looked at; looks that missed
        self._rejudged_at = -EPISODE
        self._paused_at = 0.0  # detector time our reply was paused
        self.echo_heard = False  # our voice has come back through this user's mic (no echo cancellation)

    # ---------------------------------------------------------------- what the detector says

    def speech_started(self) -> None:
        """A new utterance: it continues nothing."""
        self.heard, self._rejudged_at = Heard.USER, -EPISODE

    def over_reply(self, onset: float, at_once: bool = False) -> list[Action]:
        """Speech while we talk (or continuing an utterance we answered early). `at_once`: the
        user very likely goes on (our early answer has only just begun): pause it now."""
        self.heard = Heard.BARGE if self.allow_interruptions else Heard.IGNORED
        self.onset = onset
        # not once our own voice has come back in this session (a speakerphone): its onset would pause us each time
        return self._hold(onset, continuation=True) if at_once and self.allow_interruptions and not self.echo_heard else []

    def utterance_ended(self) -> list[Action]:
        """The detector closed the utterance; a reply still paused for it goes on."""
        held, self.heard = self.heard == Heard.HELD, Heard.USER
        return [Do.RESUME] if held else []

    def needs_contour(self, s: Signals) -> bool:
        """Will `tick` read the (costly) echo contour comparison now?"""
        if not s.speech or not s.echo_audible:
            return False
        if self.heard == Heard.BARGE:
            return s.t - self.onset >= self.pause_after
        return self.heard in (Heard.ECHO, Heard.ECHO_WORDS) and s.now >= self._look

    # ---------------------------------------------------------------- decisions

    def tick(self, s: Signals) -> list[Action]:
        if self.heard == Heard.BACKCHANNEL and s.speech:  # they go on after a short sound: judged afresh
            self.over_reply(s.t)
        if self.heard == Heard.BARGE and s.speech and s.t - self.onset >= self.pause_after:
            if s.echo_audible and s.follows_contour:
                return self._echo(Heard.ECHO, s.now)
            # not our contour (or nothing of ours to follow): maybe the user. Stop talking now;
            # the words decide (reverb smears our contour, and "mhm" is not a turn)
            return self._hold(s.t)
        if self.heard in (Heard.ECHO, Heard.ECHO_WORDS) and s.speech:
            if not s.echo_audible:  # speech goes on after our playback: the user's
                return self._rejudge(s.t - TAIL, s.t, barge_now=True)
            if s.now >= self._look and s.follows_contour is not None:
                self._look = s.now + LOOK
                self._misses = 0 if s.follows_contour else self._misses + 1
                if self._misses >= MISSES:  # the contour said no twice: the words decide, at once
                    return self._rejudge(s.t - MISSES * LOOK - WORDS_BACK, s.t)
        return []

    def heard_words(self, check: CheckWords, words: str | None, said: str, level_db: float | None, t: float, now: float,
                    going_on: bool = True) -> list[Action]:
        """A words check's answer: `words` None when STT failed (then: the user's, as without a check);
        `level_db` the checked audio's active level; `going_on`: the speech has not stopped."""
        if self.heard == Heard.HELD:
            return self._held_words(check, words, said, level_db, now, going_on)
        if self.heard != Heard.CHECKING:
            return []  # the utterance ended meanwhile, or was judged otherwise
        if words is None:
            return self._barge_in()
        silent = not words.strip()
        if silent and check.relistens > 0:
            return [replace(check, wait=RELISTEN_AFTER, relistens=check.relistens - 1)]
        # (a larger share of ours to stay echo once re-judged took the talk-over lost from 3
        # cells of 18 to 1, but a reverberant echo at gain 0.1 then interrupted us once)
        if (silent and (check.ours == Heard.ECHO or self._quiet(level_db))) or repeats_our_words(words, said):
            if check.ours == Heard.ECHO:  # a re-judgement: a talk-over may go on, the next look is the same episode
                self._rejudged_at = t
            return self._echo(check.ours, now)
        if check.overturn > 1:
            return [replace(check, wait=RELISTEN_AFTER, overturn=check.overturn - 1)]
        return self._barge_in()

    def quiet_margin(self, level_db: float | None) -> float | None:
        """dB under the user's own level (for the log)."""
        return None if self.voice_db is None or level_db is None else self.voice_db - level_db

    # ---------------------------------------------------------------- internals

    def _held_words(self, check: CheckWords, words: str | None, said: str, level_db: float | None, now: float,
                    going_on: bool) -> list[Action]:
        """Our reply is paused: cut it (the user's words) or let it go on (anything else)."""
        if words is None:
            return self._barge_in()
        if repeats_our_words(words, said):
            if going_on and check.relistens > 0:
                # our echo stops with the pause; the user (saying words we said: "the", "it was") goes on.
                # Heard again on what came after the pause only, where our voice no longer is
                return [replace(check, onset=self._paused_at + SETTLE, wait=RELISTEN_AFTER, relistens=check.relistens - 1)]
            return [Do.RESUME, *self._echo(Heard.ECHO_WORDS, now)]
        silent = not words.strip()
        if check.continuation and not going_on:
            # our echo's onset (it stopped with us; Whisper may make words of it), or a breath: they did not go on
            self.heard, self.echo_heard = Heard.BACKCHANNEL, True
            return [Do.RESUME]
        if minor(words, going_on):
            if not going_on:  # "mhm", a cough, a door: over already
                self.heard = Heard.BACKCHANNEL
                return [Do.RESUME]
            if silent and self._quiet(level_db):
                return [Do.RESUME, *self._echo(Heard.ECHO, now)]
            if check.relistens > 0:  # it goes on: listen again with more of it
                return [replace(check, wait=RELISTEN_AFTER, relistens=check.relistens - 1)]
        # words not ours, or speech that goes on (Whisper drops a person's first 0.6 s as often as
        # a quiet echo): the user's
        return self._barge_in()

    def _hold(self, t: float, continuation: bool = False) -> list[Action]:
        """Pause our reply; the words check comes once the speech has lasted a backchannel's length."""
        self.heard, self._paused_at = Heard.HELD, t
        wait = max(0.0, self.backchannel_max - (t - self.onset))
        return [Do.PAUSE, CheckWords(self.onset, wait, relistens=1, continuation=continuation)]

    def _quiet(self, level_db: float | None) -> bool:
        """Far under the user's own speaking level: our echo, more likely than the user."""
        margin = self.quiet_margin(level_db)
        return margin is not None and margin > QUIET_DB

    def _echo(self, kind: Heard, now: float) -> list[Action]:
        self.heard, self.echo_heard = kind, True
        self._look, self._misses = now + LOOK, 0
        return [Do.ECHO]

    def _barge_in(self) -> list[Action]:
        self.heard = Heard.USER
        return [Do.BARGE_IN]

    def _rejudge(self, onset: float, t: float, barge_now: bool = False) -> list[Action]:
        """Judge the speech from `onset` again; if it is the user's, their turn begins a little before it."""
        out: list[Action] = []
        if t - self._rejudged_at > EPISODE:  # not the same talk-over judged once more
            out.append(UserFrom(onset - PREROLL))
        self._rejudged_at = t
        self.over_reply(onset)
        if barge_now:
            return out + self._barge_in()
        if self.heard == Heard.BARGE:
            self.heard = Heard.CHECKING  # ours after all? watched again if so
            out.append(CheckWords(onset, relistens=RELISTENS, ours=Heard.ECHO, overturn=OVERTURN))
        return out
