"""Answering machines on phone calls (services/server/telephony/screening.py), without models:
the phrase classifier, the screening window and the greeting's end on a made-up clock, and the
whole path over a TwilioChannel on a fake socket: mute, the message after the beep, hang up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from services.server.telephony.screening import QUIET_S, Answerer, CallScreen, Screening, VoicemailPolicy, classify
from services.server.telephony.twilio import TwilioChannel
from shared.protocol import SpeechEnd, SpeechStart, TranscriptOut, TranscriptPartial
from testing.fakes import eventually
from tests.test_telephony_units import SID, FakeSocket, f32, tone

GREETINGS = [
    "Hi, you've reached Sam. I can't come to the phone right now, please leave a message after the tone.",
    "The person you are calling is not available. At the tone, please record your message.",
    "Hello. The number you have dialed is not available.",
    "Please leave your name and number and I'll get back to you.",
    "Welcome to the voicemail of John Smith.",
    "Hi, the person you're calling is using a screening service. Please state your name and why you're calling.",
    "You have reached the mailbox of 555 1234. Press one to leave a callback number.",
]
PEOPLE = ["Hello?", "Yes, speaking.", "Hi, who's this?", "Hello, this is Sam.", "Yeah, hi, what can I do for you?",
          "Good morning, Dr. Lee's office, how can I help?", "Sorry, I can't talk long, I'm driving."]


@pytest.mark.parametrize("text", GREETINGS)
def test_greetings_are_machines(text: str) -> None:
    assert classify(text) == Answerer.MACHINE


@pytest.mark.parametrize("text", PEOPLE)
def test_people_answering_are_people(text: str) -> None:
    assert classify(text) == Answerer.HUMAN


def test_screen_window_and_greeting_end() -> None:
    now = [0.0]
    screen = CallScreen(VoicemailPolicy(window_s=10), clock=lambda: now[0])
    assert classify("") == Answerer.UNKNOWN and screen.heard("Hi,", final=False) is None
    assert screen.heard("Hi.") is None and screen.verdict == Answerer.HUMAN  # a person, for now: the window stays open
    screen.speech(True)
    now[0] = 3.0
    assert screen.heard("Hi. You've reached Sam", final=False) == Answerer.MACHINE
    assert screen.heard("leave a message") is None  # said once
    assert not screen.greeting_over()  # still speaking
    screen.speech(False)
    now[0] = 3.0 + QUIET_S / 2
    assert not screen.greeting_over()
    now[0] = 3.0 + QUIET_S
    assert screen.greeting_over()
    late = CallScreen(VoicemailPolicy(window_s=10), clock=lambda: now[0])
    now[0] += 11
    assert late.heard("leave a message after the tone") is None  # past the window: a person said it


async def speak(text: str) -> AsyncIterator[np.ndarray]:
    for _ in range(3):
        yield tone(300, 0.2, 24000)


def screened_call(policy: VoicemailPolicy) -> tuple[FakeSocket, TwilioChannel, Screening, list[str]]:
    """A call's channel on a fake socket, screened with `policy`; the list gets each hang-up's reason."""
    ws = FakeSocket(hang=True)
    channel = TwilioChannel(ws, SID)
    hung_up: list[str] = []

    async def hang_up(why: str) -> None:
        hung_up.append(why)

    screening = Screening(policy, channel, hang_up, speak)
    channel.observers.append(screening.observe)
    return ws, channel, screening, hung_up


async def test_a_machine_gets_the_message_after_the_beep_then_the_call_ends() -> None:
    ws, channel, screening, hung_up = screened_call(VoicemailPolicy(action="message", message="Hello, a reminder."))
    await channel.send(SpeechStart())
    await channel.send_audio(1, f32(tone(440, 0.5, 24000)))  # the session had begun a reply to "Hi,"
    before = len(ws.events("media"))
    await channel.send(TranscriptPartial(turn_id=2, text="Hi, you've reached Sam, please leave", stable="Hi,"))
    await asyncio.sleep(0)
    assert ws.events("clear"), "the reply in Twilio's buffer is dropped at once"
    await channel.send_audio(2, f32(tone(440, 0.5, 24000)))  # the session's replies no longer reach the call
    await channel.send(TranscriptOut(turn_id=2, text="Hi, you've reached Sam, please leave a message."))
    assert len(ws.events("media")) == before
    await asyncio.sleep(0.3)
    assert len(ws.events("media")) == before  # the greeting goes on: no message yet
    await channel.send(SpeechEnd(duration=4.0))  # the beep ended
    echoed = len(ws.events("mark"))
    for _ in range(100):  # Twilio plays the message: echo each of its marks
        await asyncio.sleep(0.05)
        for mark in ws.events("mark")[echoed:]:
            channel.playback_ack(mark["mark"]["name"])
        echoed = len(ws.events("mark"))
        if hung_up:
            break
    message = ws.events("media")[before:]
    assert len(message) * 0.02 == pytest.approx(0.6, abs=0.06)  # all 0.6 s of it, then
    assert hung_up == ["answering machine: message left"]
    await screening.close()


async def test_a_machine_with_the_hangup_policy_is_hung_up_on_at_once() -> None:
    ws, channel, screening, hung_up = screened_call(VoicemailPolicy())
    await channel.send(TranscriptOut(turn_id=1, text="Hello?"))  # a person: nothing happens
    await asyncio.sleep(0.05)
    assert not hung_up and not channel.muted
    await channel.send(TranscriptOut(turn_id=2, text="Sorry, I can't take your call right now."))
    assert await eventually(lambda: bool(hung_up))
    assert hung_up == ["answering machine"] and ws.events("media") == []
    await screening.close()
