"""A turn's states and the transitions between them, and how its pipeline can end."""

from __future__ import annotations

from enum import StrEnum


class TurnState(StrEnum):
    LISTENING = "listening"  # the user is speaking; live captions
    SPECULATING = "speculating"  # the user paused: the answer is computed, its output held
    CONFIRMED = "confirmed"  # the user finished: output is released as it comes
    SPEAKING = "speaking"  # audio of the answer has gone out
    DONE = "done"  # everything was sent (the client may still be playing it)
    PAUSED = "paused"  # speech over the reply: the client stopped playing it; output held until cut or resumed
    INTERRUPTED = "interrupted"  # the user spoke over the answer: cut, what was heard is kept
    MERGED = "merged"  # the user had not finished: forgotten, a later turn `replaces` it
    DROPPED = "dropped"  # never confirmed (the session ended, or nothing usable was said)


class Outcome(StrEnum):
    """How a turn's pipeline ended, reported once to `on_end`."""

    ANSWERED = "answered"  # the whole reply was produced
    NOTHING = "nothing"  # no usable words: no reply
    FAILED = "failed"  # a service failed (the client was told)
    CANCELLED = "cancelled"  # stopped from outside (listen again, interrupt, close)


_NEXT: dict[TurnState, set[TurnState]] = {
    TurnState.LISTENING: {TurnState.SPECULATING, TurnState.DROPPED},
    TurnState.SPECULATING: {TurnState.LISTENING, TurnState.CONFIRMED, TurnState.DROPPED},
    TurnState.CONFIRMED: {TurnState.SPEAKING, TurnState.DONE, TurnState.PAUSED, TurnState.INTERRUPTED, TurnState.MERGED},
    TurnState.SPEAKING: {TurnState.DONE, TurnState.PAUSED, TurnState.INTERRUPTED, TurnState.MERGED},
    TurnState.DONE: {TurnState.PAUSED, TurnState.INTERRUPTED, TurnState.MERGED},  # its audio may still be playing
    # resumed: back to where it was (a speaking turn whose pipeline ended meanwhile goes on to DONE)
    TurnState.PAUSED: {TurnState.CONFIRMED, TurnState.SPEAKING, TurnState.DONE, TurnState.INTERRUPTED, TurnState.MERGED},
}
_ENDED = {TurnState.INTERRUPTED, TurnState.MERGED, TurnState.DROPPED}
