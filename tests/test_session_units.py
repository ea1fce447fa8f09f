"""Session mechanics that need no models: a client that stops reading, timers that do not
wait for audio, and the admission registry."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest

from services.server.admission import Admission, Full
from services.server.agents import Agent
from services.server.session import Session
from services.server.session import channel as channel_mod
from shared.audio import STT_RATE
from shared.clients import Words
from shared.config import ServerSettings
from shared.protocol import InitMessage, Interrupted, SpeechStart, TranscriptOut
from testing.fakes import FakeChat, FakeSpeeches, GoneChannel, StuckChannel


class FakeStt:
    def __init__(self, text: str = "What time is it?") -> None:
        self.text = text

    async def transcribe(self, audio: np.ndarray) -> str:
        return self.text

    async def transcribe_words(self, audio: np.ndarray) -> Words:
        return Words(self.text, 0.9)

    async def end_of_turn(self, audio: np.ndarray) -> float | None:
        return 0.9


def make_session(channel: object, **settings: object) -> Session:
    cfg = ServerSettings(**{"streaming_stt": False, "end_of_turn_policy": "text", **settings})  # type: ignore[arg-type]
    ups = SimpleNamespace(cfg=cfg, stt=FakeStt(), chat=FakeChat(), open_speech=FakeSpeeches())
    init = InitMessage(agentId="a", userId="u")
    return Session(channel, "unit", init, Agent(id="a"), ups)  # type: ignore[arg-type]


async def test_a_client_that_stops_reading_is_closed(monkeypatch):
    monkeypatch.setattr(channel_mod, "SEND_TIMEOUT", 0.2)
    channel = StuckChannel()
    s = make_session(channel)
    await s.start()
    s.send(SpeechStart())
    for _ in range(100):
        if s._closed and channel.closed_with:
            break
        await asyncio.sleep(0.02)
    assert channel.closed_with == (1008, "client is not reading") and s._closed
    s.send(SpeechStart())  # later sends are dropped at once
    await s.close()


async def test_a_send_to_a_client_that_left_ends_quietly():
    s = make_session(GoneChannel())
    await s.start()
    s.send(SpeechStart())  # a turn still speaking must not crash on its next chunk
    for _ in range(50):
        await asyncio.sleep(0.01)
    assert s._closed and s.outbox.closed
    s.send(SpeechStart())  # later sends are dropped at once
    await s.close()


def utterance(seconds: float = 1.2) -> bytes:
    """A voiced stretch (a 180 Hz buzz with a syllable rhythm, well over the energy threshold), then 1.5 s of silence."""
    t = np.arange(int(seconds * STT_RATE)) / STT_RATE
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x = np.concatenate([np.zeros(STT_RATE // 5), voiced, np.zeros(int(1.5 * STT_RATE))])
    return (x * 32767).astype("<i2").tobytes()


async def test_the_input_path_keeps_its_pace_while_the_client_stops_reading():
    """A turn is confirmed and streams while the client reads nothing: every audio frame
    is still taken at once (output waits in the outbox, never on the input path)."""
    s = make_session(StuckChannel())
    await s.start()
    pcm, frame = utterance(), 640  # 20 ms frames
    took = []
    for i in range(0, len(pcm), frame):
        t0 = time.perf_counter()
        await s.on_audio(pcm[i : i + frame])
        took.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)  # real time: the turn is computed meanwhile
    turn = s.turns.last or s.turns.active
    assert turn is not None and turn.confirmed, "the turn was confirmed while the client was stuck"
    assert max(took) < 0.5, f"an audio frame waited {max(took) * 1000:.0f} ms"
    assert not s._closed  # the client is not yet past the send timeout
    await s.close()


def test_admission_counts_per_key_and_releases():
    a = Admission(max_sessions=2, max_per_key=1)
    s1, s2, s3 = object(), object(), object()
    a.admit(s1, "k1")  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        a.admit(s2, "k1")  # type: ignore[arg-type]
    assert e.value.reason == "key_full"
    a.admit(s2, "k2")  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        a.admit(s3, "k3")  # type: ignore[arg-type]
    assert e.value.reason == "server_full"
    a.release(s1)  # type: ignore[arg-type]
    a.admit(s3, "k1")  # type: ignore[arg-type]
    a.draining = True
    with pytest.raises(Full) as e:
        a.admit(object(), "k9")  # type: ignore[arg-type]
    assert e.value.reason == "draining"


async def test_queue_admits_first_come_first_served_and_tells_each_place():
    a = Admission(max_sessions=1, max_per_key=0, max_queued=2, queue_timeout=5)  # no keys: all "anonymous"
    s1, s2, s3, s4 = (object() for _ in range(4))
    told: dict[str, list[tuple[int, float]]] = {"s2": [], "s3": []}

    def tell(name: str):
        async def f(place: int, wait: float) -> None:
            told[name].append((place, wait))
        return f

    assert a.admit(s1, "k")  # type: ignore[arg-type]
    assert not a.admit(s2, "k") and not a.admit(s3, "k")  # type: ignore[arg-type]
    w2 = asyncio.create_task(a.wait(s2, "k", tell("s2")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    w3 = asyncio.create_task(a.wait(s3, "k", tell("s3")))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    with pytest.raises(Full) as e:
        a.admit(s4, "k")  # type: ignore[arg-type]
    assert e.value.reason == "server_full"  # the queue is full too
    assert told == {"s2": [(1, 60.0)], "s3": [(2, 120.0)]}  # no session has ended yet: 60 s each
    a.release(s1)  # type: ignore[arg-type]
    await asyncio.wait_for(w2, 1)
    await asyncio.sleep(0.01)
    assert s2 in a.sessions and s3 not in a.sessions and told["s3"][-1][0] == 1
    assert told["s3"][-1][1] < 1.0  # the estimate follows how long sessions last (s1: a few ms)
    a.draining = True
    a.release(s2)  # type: ignore[arg-type]
    with pytest.raises(Full) as e:
        await asyncio.wait_for(w3, 1)
    assert e.value.reason == "draining" and not a.sessions and not a._queue


async def test_a_queued_session_gives_up_after_the_timeout():
    a = Admission(max_sessions=1, max_per_key=5, max_queued=1, queue_timeout=0.2)
    a.admit(object(), "k")  # type: ignore[arg-type]

    async def quiet(place: int, wait: float) -> None:
        pass

    with pytest.raises(Full) as e:
        await asyncio.wait_for(a.wait(object(), "k", quiet), 2)  # type: ignore[arg-type]
    assert e.value.reason == "server_full" and "within" in str(e.value) and not a._queue


def two_utterances(gap: float) -> bytes:
    """1.2 s of voice, `gap` s of silence, 1.0 s of voice, then 3 s of silence."""
    t = np.arange(int(1.2 * STT_RATE)) / STT_RATE
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    x = np.concatenate([np.zeros(STT_RATE // 5), voiced, np.zeros(int(gap * STT_RATE)), voiced[: STT_RATE], np.zeros(3 * STT_RATE)])
    return (x * 32767).astype("<i2").tobytes()


async def stream_realtime(s: Session, pcm: bytes) -> None:
    for i in range(0, len(pcm), 640):
        await s.on_audio(pcm[i : i + 640])
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("gap", "merged"), [(0.8, True), (2.1, False)])
async def test_going_on_after_an_early_answer_merges_only_soon_after_it_began(gap: float, merged: bool) -> None:
    """Answered after 450 ms of silence (the sound says finished), the user speaks again before the
    detector closes the utterance (2.5 s): 0.3 s into our answer they had not finished (one turn,
    the answer is cut); 1.6 s into it they had heard it, and what they say is a new turn."""
    from testing.fakes import RecordingChannel

    channel = RecordingChannel()
    s = make_session(channel, end_of_turn_policy="both")
    await s.start()
    await stream_realtime(s, two_utterances(gap))
    await s.close()
    transcripts = channel.of(TranscriptOut)
    assert [t.turn_id for t in transcripts][:1] == [1], "the first utterance was answered early"
    second = transcripts[1]
    assert (second.replaces == 1) is merged, transcripts
    if not merged:  # the early answer had ended and stands: nothing of it is cut
        assert 1 not in [m.turn_id for m in channel.of(Interrupted)]


async def test_an_early_answer_stops_within_100_ms_of_the_user_going_on() -> None:
    """Answered early, the user goes on 0.8 s into the silence (0.35 s into our answer): the
    answer is paused at the detector's onset, before any words check, and then merged. Counted
    in audio fed to the session, so the bound does not depend on this machine's speed."""
    from testing.fakes import RecordingChannel

    fed = [0]

    class Timed(RecordingChannel):
        at: dict[str, int] = {}

        async def send(self, msg) -> None:  # noqa: ANN001
            self.at.setdefault(str(msg.type), fed[0])
            await super().send(msg)

    channel = Timed()
    s = make_session(channel, end_of_turn_policy="both")
    s.ups.stt.transcribe = _slow(s.ups.stt.transcribe, 0.3)  # the words check must not be what stops it
    s.turns.deps.open_speech = FakeSpeeches(samples_per_piece=48000)  # 2 s a piece: still playing when they go on
    await s.start()
    pcm = two_utterances(0.8)
    for i in range(0, len(pcm), 640):
        await s.on_audio(pcm[i : i + 640])
        fed[0] = (i + 640) // 2
        await asyncio.sleep(0.02)
    await s.close()
    onset = int((0.2 + 1.2 + 0.8) * STT_RATE)
    assert channel.of(TranscriptOut)[1].replaces == 1  # merged into one turn
    assert "interrupted" in channel.at and "resumed" not in channel.at
    stopped_ms = (channel.at["interrupted"] - onset) / STT_RATE * 1000
    print(f"\nstopped {stopped_ms:.0f} ms after the user went on")
    assert 0 < stopped_ms <= 100 + 20, stopped_ms  # within one 20 ms frame of 100 ms


def _slow(transcribe, seconds: float):  # noqa: ANN001, ANN202
    async def slow(audio: np.ndarray) -> str:
        await asyncio.sleep(seconds)
        return await transcribe(audio)

    return slow


async def test_the_learned_end_of_turn_is_told_how_long_the_user_spoke() -> None:
    """SERVER_END_OF_TURN_POLICY=learned reads a speaking rate: the turn's speech is measured
    in detector time, from the onset to the last voiced hop (not the pre-roll, not the silence)."""
    from testing.fakes import RecordingChannel

    s = make_session(RecordingChannel(), end_of_turn_policy="learned")
    await s.start()
    await stream_realtime(s, utterance(1.2))
    turns = s.turns
    turn = next(t for t in (turns.early, turns.active, turns.last, turns.current) if t is not None and t.transcript)
    await s.close()
    assert turn.speech_s == pytest.approx(1.2, abs=0.1)
    assert turn.sentence_end == 0.9 and turn.learned_wait is not None  # the batch STT's reading reached the model
