"""Turn-taking end to end with the real models: barge-in, echo, short answers, pauses, noise."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np
import pytest
import websockets

from shared.wer import normalise, wer
from testing.audio import cough, synthesized
from testing.session_client import stream_pcm
from tests.conftest import SPOKEN, at_level, babble, trimmed, with_pause

pytestmark = pytest.mark.e2e
FRAME = 320


def by_length(corpus):
    return sorted(corpus, key=lambda c: len(c.audio))


class Live:
    """A session whose microphone stream the test controls while it listens."""

    def __init__(self, url: str, **init: str) -> None:
        self.url = url + uuid.uuid4().hex
        self.init = {"agentId": "assistant", "userId": "t", "agentName": "T", **init}
        self.events: list[tuple[float, dict]] = []
        self.first_audio: dict[int, float] = {}

    async def __aenter__(self) -> Live:
        self.ws = await websockets.connect(self.url, max_size=2**24)
        await self.ws.send(json.dumps(self.init))
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            now = time.perf_counter()
            self.events.append((now, msg))
            if msg["type"] == "tts_stream":
                self.first_audio.setdefault(msg["data"]["turn_id"], now)

    async def speak(self, pcm: np.ndarray) -> None:
        t0 = time.perf_counter()
        for k in range(0, len(pcm), FRAME):
            await asyncio.sleep(max(0.0, t0 + k / 16000 - time.perf_counter()))
            await self.ws.send(pcm[k : k + FRAME].astype(np.int16).tobytes())

    async def silence_until(self, cond, timeout: float) -> None:
        t0 = time.perf_counter()
        while not cond() and time.perf_counter() - t0 < timeout:
            await self.speak(np.zeros(FRAME * 5, np.int16))

    def of(self, kind: str) -> list[dict]:
        return [m for _, m in self.events if m["type"] == kind]

    def ended(self, turn_id: int) -> bool:
        return any(m.get("turn_id") == turn_id for m in self.of("tts_stream_end"))

    def audio_seconds(self, turn_id: int) -> float:
        """How much of that turn's answer arrived (float32 at 24 kHz, base64)."""
        chunks = [m["data"] for m in self.of("tts_stream") if m["data"]["turn_id"] == turn_id]
        return sum(len(d["chunk"]) * 3 // 4 // 4 for d in chunks) / 24000


LONG_REPLIES = "A chatty voice assistant who always answers in four or five long spoken sentences."
# s of answer the second utterance can talk over: it starts 0.25 s after the first audio, and
# speech over our reply counts once it lasts 0.6 s (then the words check, ~0.1-0.4 s)
TALK_OVER_SHORTEST = 1.5
# over our echo: the talk-over starts 1 s after the first audio, and is told from the echo
# once the contour stops following ours (~0.4-1 s) and STT has heard its words (~0.1-0.4 s)
ECHO_TALK_OVER_SHORTEST = 3.5


async def test_barge_in_stops_the_answer_and_keeps_only_what_was_heard(system, corpus):
    first, second = by_length(corpus)[-8], by_length(corpus)[-6]
    for _ in range(3):
        async with Live(system.ws, systemPrompt=LONG_REPLIES) as s:
            await s.speak(np.concatenate([np.zeros(8000, np.int16), first.audio]))
            await s.silence_until(lambda: 1 in s.first_audio, 15)
            assert 1 in s.first_audio, "no answer to the first utterance"
            await s.speak(np.concatenate([np.zeros(4000, np.int16), second.audio]))
            await s.silence_until(lambda: len(s.of("transcript")) == 2 and s.ended(s.of("transcript")[1]["turn_id"]), 20)
        cut = [(t, m) for t, m in s.events if m["type"] == "interrupted"]
        if cut or s.audio_seconds(1) >= TALK_OVER_SHORTEST:
            break
        # the sampled answer ("Okay.") ended before the user spoke over it: nothing to interrupt, ask again

    assert cut and cut[0][1]["turn_id"] == 1
    t_cut = cut[0][0]
    late = [m for t, m in s.events if m["type"] == "tts_stream" and m["data"]["turn_id"] == 1 and t > t_cut]
    assert late == []  # not one chunk of the old answer after `interrupted`
    assert len(s.of("transcript")) == 2 and s.ended(s.of("transcript")[1]["turn_id"])
    print(f"\ninterrupted 1 after {cut[0][1]['played_ms']:.0f} ms of playback; "
          f"{(t_cut - s.first_audio[1]) * 1000:.0f} ms after its first audio")

    # the chat request of turn 2 carries turn 1's reply cut to what was played
    reply1 = "".join(m["text"] for m in s.of("response_text") if m["turn_id"] == 1).strip()
    user2 = s.of("transcript")[1]["text"]
    request = next(r for r in reversed(system.chat_tap.requests) if r["messages"][-1]["content"] == user2)
    history = [m for m in request["messages"] if m["role"] == "assistant"]
    assert len(history) <= 1
    heard, full = normalise(history[0]["content"] if history else ""), normalise(reply1)
    assert len(heard) < len(full) and full[: len(heard)] == heard


SHORT_REPLIES = "A voice assistant who answers every message with one short sentence of three to six words."


async def test_a_one_second_reply_can_be_interrupted(system, corpus):
    """Speech over our reply pauses it once it has lasted 0.25 s (the words then cut it), so a
    reply of about a second is stopped while it plays, not after it ended."""
    first, second = by_length(corpus)[5], by_length(corpus)[-6]
    for _ in range(4):
        res = await stream_pcm(system.ws, first.audio, tail=9.0, barge=(second.audio, 0.2),
                               init={"agentId": "assistant", "userId": "t", "agentName": "T", "systemPrompt": SHORT_REPLIES})
        cut = [e for e in res.events if e.type == "interrupted"]
        if cut or res.audio_seconds(1) >= 1.0:
            break
        # the sampled answer was shorter than the time the talk-over needs to start (0.2 s) and
        # last 0.25 s: nothing left to interrupt, ask again
    assert cut, f"a {res.audio_seconds(1):.1f} s reply was not interrupted"
    assert cut[0].msg["turn_id"] == 1 and cut[0].msg["played_ms"] < 1000, cut[0].msg
    late = [e for e in res.events if e.type == "tts_stream" and e.msg["data"]["turn_id"] == 1 and e.t > cut[0].t]
    assert late == [] and res.of("resumed") == []  # the user's words: cut for good
    msgs = res.of("transcript")
    assert len(msgs) == 2, msgs
    # an answer given early (the detector had not closed the first utterance) is merged: the turn
    # `replaces` it and holds both clips; else the talk-over is a turn of its own
    said = (first.transcript + " " if msgs[1].get("replaces") == 1 else "") + second.transcript
    assert wer([said], [msgs[1]["text"]]) <= 0.4, msgs
    print(f"\ninterrupted after {cut[0].msg['played_ms']:.0f} ms of a {res.audio_seconds(1):.1f} s reply")


async def _backchannel(tts: str, text: str) -> np.ndarray:
    return at_level(await asyncio.to_thread(synthesized, tts, text), -20.0)


async def test_a_backchannel_or_a_cough_over_the_reply_pauses_it_and_it_goes_on(system, corpus):
    """"Yeah." or a cough over our reply: it pauses (`interrupted`), then goes on from where the
    client stopped (`resumed`, LiveKit's false interruption): nothing of it lost, no new turn."""
    first = by_length(corpus)[-8]
    for name, sound in (("yeah", await _backchannel(system.tts, "Yeah.")), ("cough", cough())):
        for _ in range(4):
            res = await stream_pcm(system.ws, first.audio, tail=14.0, barge=(sound, 1.0),
                                   init={"agentId": "assistant", "userId": "t", "agentName": "T", "systemPrompt": LONG_REPLIES})
            if res.of("interrupted") or res.audio_seconds(1) >= 2.5:
                break
            # the sampled answer ended before the sound came over it: ask again
        cut, back = res.of("interrupted"), res.of("resumed")
        print(f"\n{name}: transcripts {res.transcripts}, interrupted {cut}, resumed {back}, reply {res.audio_seconds(1):.1f} s")
        assert len(res.transcripts) == 1, (name, res.transcripts)  # not a turn
        if not cut:  # too short to pause for (under 0.25 s of speech, as the detector heard it)
            continue
        assert back and back[0]["turn_id"] == 1 and back[0]["from_ms"] == cut[0]["played_ms"], (name, back)
        at_cut = next(e.t for e in res.events if e.type == "interrupted")
        at_back = next(e.t for e in res.events if e.type == "resumed")
        before = sum(len(e.msg["data"]["chunk"]) * 3 // 4 // 4 for e in res.events
                     if e.type == "tts_stream" and e.msg["data"]["turn_id"] == 1 and e.t < at_cut) / 24000
        after = sum(len(e.msg["data"]["chunk"]) * 3 // 4 // 4 for e in res.events
                    if e.type == "tts_stream" and e.msg["data"]["turn_id"] == 1 and e.t > at_back) / 24000
        # what was played, then all the rest once: the reply is whole, at least what had been sent
        assert after > 0 and cut[0]["played_ms"] / 1000 + after >= before - 0.05, (name, before, after)
        assert any(m["turn_id"] == 1 for m in res.of("tts_stream_end"))
        assert at_back - at_cut < 2.0  # decided within the words check's time


async def test_own_voice_looped_back_does_not_trigger_a_turn(system, corpus):
    clip = by_length(corpus)[len(corpus) // 2]
    res = await stream_pcm(system.ws, clip.audio, tail=8.0, loopback=(0.5, 0.06), wait_for_end=2)
    assert len(res.transcripts) == 1, res.transcripts
    # an answer given early is paused at once if speech seems to go on (our echo's onset, here),
    # and goes on when that speech stops with the pause: a gap, never a lost reply
    cut, back = res.of("interrupted"), res.of("resumed")
    print(f"\nlooped back: {len(cut)} pauses, {len(back)} resumed")
    assert len(cut) <= 1 and [m["turn_id"] for m in back] == [m["turn_id"] for m in cut]
    # one reply (it ends again after a resume if its end had already gone out), all of it heard
    assert {m["turn_id"] for m in res.of("tts_stream_end")} == {1} and res.audio_seconds() >= SPOKEN


async def test_a_talk_over_our_echo_becomes_its_own_turn(system, corpus):
    """A speakerphone: our voice comes back (judged echo, ignored), then the user talks over
    it. Their words become a turn of their own, without the first turn's words."""
    first, second = by_length(corpus)[-8], by_length(corpus)[-6]
    # One person, one speaking level (as in bench/echo.py): the recordings differ by 9 dB, and at
    # their own levels the talk-over was ~5 dB under our echo, where Whisper hears only our words
    # and the talk-over is lost whenever it ends before our reply does (a CI failure on 4 December).
    said, talk_over = at_level(first.audio, -20.0), at_level(second.audio, -20.0)
    for _ in range(5):
        # the tail covers both turns' waits for words that read unfinished (up to 2.5 s each)
        res = await stream_pcm(system.ws, said, tail=14.0, loopback=(0.5, 0.15), wait_for_end=2,
                               init={"agentId": "assistant", "userId": "t", "agentName": "T", "systemPrompt": LONG_REPLIES},
                               barge=(talk_over, 1.0))
        merged = any(m.get("replaces") for m in res.of("transcript"))
        if not merged and (res.of("interrupted") or res.audio_seconds(1) >= ECHO_TALK_OVER_SHORTEST):
            break
        # the sampled answer ended before the talk-over could be told from our echo, or the first
        # utterance was answered early inside a pause of its own and merged (its reply then comes
        # later, and the talk-over with it: tested elsewhere): ask again
    # Whether the talk-over interrupts, and what Whisper makes of its overlap with our echo, are
    # chance here; bench/echo.py measures both. In 11 runs of this test: 2 not interrupted (the
    # first words check heard our words, and speech judged so was not watched until we stopped),
    # 4 with the wrong words (our echo's alone: "it was just a little long ago."; or answered
    # early on them, "No, I didn't.", then again). What must hold: the talk-over becomes a turn
    # (once in CI it did not, before words-judged echo was watched too), and no turn after the
    # first repeats the first utterance (one used to begin there).
    assert len(res.transcripts) >= 2, (res.transcripts, res.story(system.log))
    reply1 = "".join(m["text"] for m in res.of("response_text") if m["turn_id"] == 1)
    first_only = set(normalise(first.transcript)) - set(normalise(second.transcript)) - set(normalise(reply1))
    for later in res.transcripts[1:]:
        assert len(first_only & set(normalise(later))) <= 1, (res.transcripts, res.story(system.log))


async def test_a_short_yes_is_answered(system):
    yes = (await asyncio.to_thread(synthesized, system.tts, "Yes.") // 2).astype(np.int16)
    assert len(yes) < 16000  # well under a second of speech
    res = await stream_pcm(system.ws, yes)
    assert [normalise(t) for t in res.transcripts] == [["yes"]]
    assert res.audio_seconds() >= SPOKEN


async def test_long_pause_inside_a_sentence_does_not_split_it(system, corpus):
    clip = by_length(corpus)[-1]
    paused, at = with_pause(clip.audio, 0.7)  # under the 0.9 s silence limit
    res = await stream_pcm(system.ws, paused)
    print(f"\n{clip.id} with a 0.7 s pause at {at:.2f}s: {res.transcripts}")
    assert len(res.transcripts) == 1
    assert wer([clip.transcript], res.transcripts) <= 0.3
    assert res.early_audio == 0 and res.of("interrupted") == []


def one_turn(res) -> str:  # noqa: ANN001
    """The utterance was answered as one turn: a single transcript, or later ones that each
    `replaces` the one before (a merged turn repeats the earlier words). Its final words."""
    msgs = res.of("transcript")
    assert msgs, "no transcript"
    for earlier, later in zip(msgs, msgs[1:], strict=False):
        assert later.get("replaces") == earlier["turn_id"], msgs
    return msgs[-1]["text"]


async def test_a_long_pause_inside_an_unfinished_sentence_stays_one_turn(system, corpus):
    clip = by_length(corpus)[-2]
    paused, at = with_pause(clip.audio, 1.6)  # longer than the 0.9 s cap for unsure turns
    res = await stream_pcm(system.ws, paused, tail=3.5)
    final = one_turn(res)
    print(f"\n{clip.id} with a 1.6 s pause at {at:.2f}s: {res.transcripts}, early audio {res.early_audio}")
    assert wer([clip.transcript], [final]) <= 0.3


async def test_a_merged_turn_says_which_turn_it_replaces(system, corpus):
    """A finished sentence, a 0.7 s pause (answered early), then the speaker goes on."""
    first, second = by_length(corpus)[6], by_length(corpus)[9]
    gap = np.zeros(int(0.7 * 16000), np.int16)
    res = await stream_pcm(system.ws, np.concatenate([trimmed(first.audio), gap, trimmed(second.audio)]), tail=3.0)
    msgs = res.of("transcript")
    print(f"\n{first.id} + {second.id}: {[(m['turn_id'], m.get('replaces'), m['text']) for m in msgs]}")
    final = one_turn(res)
    assert wer([first.transcript + " " + second.transcript], [final]) <= 0.3
    if len(msgs) > 1:  # an early answer came (the first sentence read finished): the link must be there
        assert msgs[-1]["replaces"] == msgs[0]["turn_id"]


async def test_a_turn_ends_while_other_people_keep_talking(system, corpus):
    """Babble at 20 dB SNR that goes on for 8 s after the speaker stops: the answer must
    come while it goes on, not once the room falls silent."""
    clip = by_length(corpus)[12]
    speech = trimmed(clip.audio).astype(np.float32) / 32768
    voiced = speech[np.abs(speech) > 0.01]
    room = babble(corpus, clip.id.split("-")[0], len(speech) / 16000 + 8.0, float(np.sqrt(np.mean(voiced**2))) / 10)
    room[: len(speech)] += speech
    pcm = (np.clip(room, -1, 1) * 32767).astype(np.int16)
    res = await stream_pcm(system.ws, pcm, lead=0.0, tail=0.5, wait_for_end=5)
    assert res.transcripts and wer([clip.transcript], [res.transcripts[-1]]) <= 0.4
    first = next((e.t for e in res.events if e.type in ("tts_stream", "response_text")), None)
    sent_all = res.speech_end  # stream_pcm marks the end of the (babble-loud) stream's last voiced frame
    print(f"\n{clip.id} in babble: {res.transcripts}; answer {None if first is None else round(first - sent_all, 2)} s "
          "relative to the end of the babble")
    assert first is not None and (sent_all is None or first < sent_all)  # answered while the others still talked


async def test_noise_alone_yields_no_turn(system):
    rng = np.random.default_rng(7)
    bursts = []
    for level in (0.05, 0.1, 0.2):  # loud hiss bursts, far above the room floor
        bursts += [np.zeros(8000), rng.standard_normal(12000) * level]
    noise = (np.concatenate(bursts) * 32767).clip(-32768, 32767).astype(np.int16)
    res = await stream_pcm(system.ws, noise, wait_for_end=3)
    assert res.transcripts == [] and res.audio_seconds() == 0
    assert "speech_start" in [e.type for e in res.events]  # the detector did fire; STT rejected it

