"""Answering machines and call screening: who picked up the call, a person or a machine?

A call our agent places (or one forwarded to a mailbox) may be answered by a voicemail
greeting ("You've reached Sam, leave a message after the tone") or a screening service ("The
person you're calling is using a screening service, please state your name"). Talking to it
as to a person wastes the call and leaves a half-answer on the tape. The callee's first words
decide: a short classifier over the live transcript of the first seconds, as LiveKit's and
Twilio's own detection start from. The agent's `voicemail` setting says what to do then.

    MACHINE  a greeting's phrases: hang up, or wait for the beep (the greeting's end) and leave
             the agent's message, then hang up
    HUMAN    anything else said first ("Hello?", "Yes, speaking"): the conversation goes on
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from shared.protocol import SpeechEnd, SpeechStart, TranscriptOut, TranscriptPartial

log = logging.getLogger("server.telephony")

WINDOW_S = 10.0  # s from the call's start in which the first words are screened
QUIET_S = 1.2  # s of quiet after the greeting (its beep included) before our message starts
GREETING_MAX_S = 30.0  # a greeting longer than this: the message goes on anyway

# phrases of voicemail greetings and screening services; one is enough (people answering a
# call say none of these first)
_MACHINE = [re.compile(p) for p in (
    r"\b(leave|record) (me |us )?(a |your )?(brief |short )?(message|voicemail|name)",
    r"\bafter the (tone|beep)\b",
    r"\b(at|after) the (sound of the )?(tone|beep)\b",
    r"\bvoice ?mail\b",
    r"\bmail ?box\b",
    r"\b(is|are) (not|unable|currently unavailable|unavailable)( to)?( available| take| come| answer)",
    r"\bnot available (to take|right now|at the moment)",
    r"\b(can't|cannot|can not) (come to|take|answer) (the phone|your call)",
    r"\byou('ve| have) reached\b",
    r"\b(using|uses) a (call )?screening service\b",
    r"\bstate your name\b",
    r"\bwho(m)? (is|are) (calling|you calling)\b.*\b(record|tone|name)",
    r"\bthe (number|person|subscriber) you (have )?(dialed|called|are calling)\b",
    r"\bget back to you\b",
    r"\bpress (one|1|pound|the pound key)\b",
)]


class Answerer(StrEnum):
    UNKNOWN = "unknown"  # nothing said yet
    HUMAN = "human"
    MACHINE = "machine"


def classify(text: str) -> Answerer:
    """The callee's first words: a greeting's phrase means a machine, other words a person."""
    t = " " + re.sub(r"[^a-z0-9' ]+", " ", text.lower()) + " "
    if any(p.search(t) for p in _MACHINE):
        return Answerer.MACHINE
    return Answerer.HUMAN if re.search(r"[a-z0-9]", t) else Answerer.UNKNOWN


class VoicemailPolicy(BaseModel):
    """An agent's answer to a machine (agents.json, `voicemail`): hang up, or leave `message`."""

    action: Literal["hangup", "message"] = "hangup"
    message: str | None = Field(None, max_length=1000, description="spoken after the greeting's beep (action message)")
    window_s: float = Field(WINDOW_S, gt=0, le=60, description="s from the start of the call in which the callee is screened")


class CallScreen:
    """Screens the transcripts of the first `window_s` of a call for a machine's greeting
    (`heard`); the speech events (`speech`) tell when that greeting has ended (`greeting_over`)."""

    def __init__(self, policy: VoicemailPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self.clock = policy, clock
        self.start = clock()
        self.verdict = Answerer.UNKNOWN
        self._speaking = False
        self._quiet_since: float | None = None

    def heard(self, text: str, final: bool = True) -> Answerer | None:
        """MACHINE the first time a greeting's phrase is heard in the window; else None. Words
        without one (a final transcript) make the callee a person for now, but the window stays
        open: a greeting may start with "Hi," before "you've reached"."""
        if self.verdict == Answerer.MACHINE or self.clock() - self.start > self.policy.window_s:
            return None
        found = classify(text)
        if found == Answerer.MACHINE:
            self.verdict = found
            return found
        if found == Answerer.HUMAN and final:
            self.verdict = found
        return None

    def speech(self, started: bool) -> None:
        self._speaking = started
        self._quiet_since = None if started else self.clock()

    def greeting_over(self) -> bool:
        """The machine has been quiet for QUIET_S since its last speech (the beep is short, and
        the detector hears it as speech), or the greeting outlasted GREETING_MAX_S."""
        now = self.clock()
        if now - self.start > GREETING_MAX_S:
            return True
        return not self._speaking and self._quiet_since is not None and now - self._quiet_since >= QUIET_S


MESSAGE_TURN = 0  # the turn id of our voicemail message's audio (the session's turns start at 1)
PLAYED_TIMEOUT = 30.0  # s to wait for Twilio to say the message has played


class ScreenedChannel(Protocol):
    """What screening needs of the call's channel (telephony.twilio.TwilioChannel)."""

    async def mute(self) -> None: ...

    async def play(self, turn_id: int, pcm: bytes) -> None: ...

    async def finish(self, turn_id: int) -> None: ...

    async def played(self, turn_id: int, timeout: float) -> bool: ...


class Screening:
    """Screens one call: watches what the session tells the caller (transcripts, speech events),
    and when a machine answered, mutes the session, leaves the message if the agent has one, and
    hangs up."""

    def __init__(self, policy: VoicemailPolicy, channel: ScreenedChannel, hang_up: Callable[[str], Awaitable[None]],
                 speak: Callable[[str], AsyncIterator[np.ndarray]], clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self.channel, self.hang_up, self.speak = policy, channel, hang_up, speak
        self.screen = CallScreen(policy, clock)
        self.task: asyncio.Task[None] | None = None

    def observe(self, msg: object) -> None:
        """Every message the session sends the caller, before it is sent."""
        if isinstance(msg, SpeechStart | SpeechEnd):
            self.screen.speech(isinstance(msg, SpeechStart))
        elif isinstance(msg, TranscriptOut | TranscriptPartial) and self.task is None \
                and self.screen.heard(msg.text, final=isinstance(msg, TranscriptOut)) == Answerer.MACHINE:  # captions: sooner
            log.info("the call was answered by a machine (%r): %s", msg.text[:80], self.policy.action)
            self.task = asyncio.create_task(self._machine())

    async def _machine(self) -> None:
        await self.channel.mute()  # nothing more of the session's replies reaches the tape
        message = self.policy.message if self.policy.action == "message" else None
        if message:
            while not self.screen.greeting_over():
                await asyncio.sleep(0.05)
            async for chunk in self.speak(message):
                await self.channel.play(MESSAGE_TURN, chunk.astype("<f4").tobytes())
            await self.channel.finish(MESSAGE_TURN)
            heard = await self.channel.played(MESSAGE_TURN, PLAYED_TIMEOUT)
            log.info("voicemail message left (%d chars%s)", len(message), "" if heard else "; its playback was not confirmed")
        await self.hang_up("answering machine" + (": message left" if message else ""))

    async def close(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
