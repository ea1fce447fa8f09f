"""The echo guard over the grid of issue 10, offline and frame by frame as the session runs it.

Agent speech is a real TTS reply (Piper, the bundled voice). The microphone hears it
back delayed 0-500 ms, at gains 0.1-1.0, with and without a reverberant room, over
light noise; optionally a second person (a corpus clip at a normal speaking level)
talks over it. Each 20 ms frame goes through `EchoGuard.on_input` (which gates it)
and then the speech detector, and the session's turn-taking rules decide what would
happen: our own voice must never become a user turn or interrupt us, while the person
talking over us must barge in, in every cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from services.server.echo import EchoGuard
from shared.audio import resample, reverberate, rms_dbfs, room_impulse_response, white_noise
from shared.speech_detector import AudioSpeechDetector, DetectorConfig, SpeechStarted, UtteranceEnded

DELAYS = (0.0, 0.04, 0.15, 0.3, 0.45, 0.5)
GAINS = (0.1, 0.3, 0.6, 0.8, 1.0)
ROOMS = (None, 0.45)  # RT60 in seconds; None: no reverb
START = 1.0  # the reply starts playing here (s)
TALK_AT = 2.5  # the second talker starts this long into the reply (s)
BACKCHANNEL_MAX = 0.6  # ServerSettings.backchannel_max
REPLY = ("Sorry to hear that. I hope you feel better soon, and if there is anything I can do, "
         "just let me know. Would you like some tips for a good night's sleep?")


@dataclass
class Outcome:
    self_turns: list[float] = field(default_factory=list)  # utterances taken as a new user turn
    barge_ins: list[float] = field(default_factory=list)  # when an utterance interrupted the reply
    onsets: list[float] = field(default_factory=list)  # every SpeechStarted


def run_session(reply24k: np.ndarray, mic16k: np.ndarray, chunk: float = 0.1, recheck: bool = True) -> Outcome:
    """The session's input path and turn-taking rules (services/server/session.py)
    over a recorded microphone stream; the whole reply is sent at START, played from START.

    `recheck`: the session change this guard asks for: speech that starts while our echo
    is audible is a barge candidate (not only while we play), and an utterance found to
    be echo keeps being checked, so someone who starts talking during it still barges in."""
    guard, det = EchoGuard(), AudioSpeechDetector(DetectorConfig(pause_duration=0.15))
    play_end = START + len(reply24k) / 24000
    out, state, onset, sent = Outcome(), None, 0.0, False
    for i in range(0, len(mic16k) - 319, 320):
        now = (i + 320) / 16000
        if not sent and now >= START - 0.02:  # TTS runs faster than real time: all of it goes out at once
            step = int(chunk * 24000)
            for k in range(0, len(reply24k), step):
                guard.on_output(reply24k[k : k + step], START + k / 24000)
            sent = True
        x = mic16k[i : i + 320].copy()
        guard.on_input(x, now)
        speaking = now < play_end
        for ev in det.push(x):
            if isinstance(ev, SpeechStarted):
                out.onsets.append(ev.t)
                if speaking or (recheck and guard.audible()):
                    state, onset = "barge", ev.t
                else:
                    state = "normal"
                    out.self_turns.append(ev.t)
            elif isinstance(ev, UtteranceEnded):
                state = None
        candidate = state == "barge" or (recheck and state == "echo")
        if candidate and det.in_speech and det.silence == 0.0 and det.time - onset >= BACKCHANNEL_MAX:
            if (speaking or (recheck and guard.audible())) and guard.is_echo():
                state = "echo"
            else:
                state = "normal"
                out.barge_ins.append(det.time)
    return out


def microphone(reply24k: np.ndarray, delay: float, gain: float, rt60: float | None, talker: np.ndarray | None = None,
               seed: int = 0) -> np.ndarray:
    ours = resample(reply24k, 24000, 16000) * gain
    if rt60:
        ours = reverberate(np.concatenate([ours, np.zeros(int(rt60 * 16000), np.float32)]),
                           room_impulse_response(rt60, drr_db=0.0, seed=seed))
    n = int((START + len(reply24k) / 24000 + 3.0) * 16000)
    mic = white_noise(n, -55.0, seed)  # light noise
    at = int((START + delay) * 16000)
    mic[at : at + len(ours)] += ours[: n - at]
    if talker is not None:
        at = int((START + TALK_AT) * 16000)
        mic[at : at + len(talker)] += talker[: n - at]
    return mic


@pytest.fixture(scope="module")
def reply() -> np.ndarray:
    from piper import SynthesisConfig

    from services.tts.engines.piper import PiperEngine
    from shared.config import TtsSettings

    engine = PiperEngine(TtsSettings())
    quiet = SynthesisConfig(volume=0.8, noise_scale=0.0, noise_w_scale=0.0)  # as the service speaks, minus its randomness
    audio = np.concatenate([c.audio_float_array for c in engine._voice(None).synthesize(REPLY, quiet)])
    return resample(audio, engine.rate_for(None), 24000)


@pytest.fixture(scope="module")
def talkers(corpus) -> list[np.ndarray]:
    """Corpus clips at a normal speaking level (-20 dBFS: as loud as our own voice at gain 1)."""
    out = []
    for clip in corpus[2::5]:
        x = clip.audio[: 16000 * 3].astype(np.float32) / 32768
        out.append(x * 10 ** ((-20.0 - rms_dbfs(x)) / 20))
    return out


@pytest.mark.parametrize("rt60", ROOMS, ids=["dry", "reverb"])
def test_own_voice_never_becomes_a_turn_over_the_grid(reply, rt60):
    bad = []
    for delay in DELAYS:
        for gain in GAINS:
            out = run_session(reply, microphone(reply, delay, gain, rt60))
            if out.self_turns or out.barge_ins:
                bad.append((delay, gain, out))
    assert bad == [], bad


@pytest.mark.parametrize("rt60", ROOMS, ids=["dry", "reverb"])
def test_someone_talking_over_us_still_barges_in_over_the_grid(reply, talkers, rt60):
    missed, lags = [], []
    for k, (delay, gain) in enumerate((d, g) for d in DELAYS for g in GAINS):
        talker = talkers[k % len(talkers)]
        out = run_session(reply, microphone(reply, delay, gain, rt60, talker, seed=k))
        talk = START + TALK_AT
        hits = [t for t in out.barge_ins if talk + BACKCHANNEL_MAX <= t <= talk + len(talker) / 16000]
        if not hits:
            missed.append((delay, gain, k % len(talkers), out))
        else:
            lags.append(hits[0] - talk)
        assert out.self_turns == [] and all(t >= talk for t in out.barge_ins), (delay, gain, out)  # never ourselves
    print(f"\nbarge-in {np.median(lags):.2f}-{max(lags):.2f} s after the talker began (median-max)")
    assert missed == [], missed


def test_guard_is_cheap_enough_for_the_event_loop(reply):
    import time

    mic = microphone(reply, 0.3, 0.8, 0.45)
    guard = EchoGuard()
    guard.on_output(reply, START)
    took = []
    for i in range(0, len(mic) - 319, 320):
        x = mic[i : i + 320].copy()
        t0 = time.perf_counter()
        guard.on_input(x, (i + 320) / 16000)
        took.append(time.perf_counter() - t0)
    print(f"\necho guard per 20 ms frame: mean {np.mean(took) * 1000:.3f} ms, p99 {np.percentile(took, 99) * 1000:.3f} ms")
    assert np.mean(took) < 0.5e-3


def test_away_from_playback_input_passes_untouched():
    guard = EchoGuard()
    x = white_noise(16000, -30.0, 1)
    y = x.copy()
    for i in range(0, len(y), 320):
        guard.on_input(y[i : i + 320], (i + 320) / 16000)
    assert np.array_equal(x, y)
    guard.on_output(np.zeros(2400, np.float32) + 0.1, 1.0)  # long after this playback, input is ours again
    z = x.copy()
    for i in range(0, len(z), 320):
        guard.on_input(z[i : i + 320], 5.0 + (i + 320) / 16000)
    assert np.array_equal(x, z)


def test_off_switch():
    guard = EchoGuard(threshold=1.5)
    guard.on_output(np.full(24000, 0.1, np.float32), 0.0)
    x = np.full(320, 0.1, np.float32)
    assert np.array_equal(guard.on_input(x.copy(), 0.02), x) and not guard.is_echo()


# ---------------------------------------------------------------------------- end to end (real services)

LONG_REPLIES = {"agentId": "assistant", "userId": "t", "agentName": "T",
                "systemPrompt": "A chatty voice assistant who always answers in four or five long spoken sentences."}
LIVE_WORST = [(1.0, 0.5, 0.45), (0.8, 0.45, 0.45), (1.0, 0.04, 0.0)]  # (gain, delay s, RT60 s): loudest, latest, reverberant


def _at_level(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    x = pcm.astype(np.float32) / 32768
    return (x * 10 ** ((dbfs - rms_dbfs(x)) / 20) * 32767).clip(-32768, 32767).astype(np.int16)


@pytest.mark.e2e
@pytest.mark.parametrize(("gain", "delay", "rt60"), LIVE_WORST)
async def test_live_own_voice_on_a_speakerphone(system, corpus, gain, delay, rt60):
    from shared.session_client import stream_pcm

    clip = sorted(corpus, key=lambda c: len(c.audio))[len(corpus) // 3]
    res = await stream_pcm(system.ws, _at_level(clip.audio, -20.0), tail=10.0, loopback=(gain, delay, rt60, -55.0),
                           wait_for_end=2, init=LONG_REPLIES)
    assert len(res.transcripts) == 1, res.transcripts  # no self-turn
    assert res.of("interrupted") == []  # no self-interruption
    assert res.audio_seconds() >= 0.5


async def _talk_over(url: str, first: np.ndarray, second: np.ndarray, loop: tuple[float, float, float, float],
                     after: float = 0.3) -> list[dict]:
    """Say `first`; `after` seconds into the reply's first audio, say `second` over it, while the
    reply plays back into the microphone (shared.session_client._Loopback). Returns the messages."""
    import asyncio
    import base64
    import json
    import time
    import uuid

    import websockets

    from shared.session_client import _Loopback

    mic = np.zeros(16000 * 30, np.int16)
    mic[8000 : 8000 + len(first)] = first
    echo = _Loopback(len(mic), *loop)
    msgs: list[dict] = []
    placed = False
    async with websockets.connect(url + uuid.uuid4().hex, max_size=2**24) as ws:
        await ws.send(json.dumps(LONG_REPLIES))
        t0 = time.perf_counter()

        async def read() -> None:
            nonlocal placed
            async for raw in ws:
                msg = json.loads(raw)
                msgs.append(msg)
                if msg["type"] == "tts_stream":
                    now = time.perf_counter() - t0
                    echo.play(np.frombuffer(base64.b64decode(msg["data"]["chunk"]), "<f4"), now)
                    if not placed:  # the reply has begun: talk over it
                        at = int((now + after) * 16000)
                        mic[at : at + len(second)] = second
                        placed = True

        reader = asyncio.create_task(read())
        for sent in range(0, len(mic) * 2, 640):
            await asyncio.sleep(max(0.0, t0 + sent / 32000 - time.perf_counter()))
            await ws.send(echo.mix(mic, sent, 640))
            if any(m["type"] == "interrupted" for m in msgs):
                break
        reader.cancel()
    return msgs


@pytest.mark.e2e
@pytest.mark.xfail(reason="the model's replies last ~1-3 s; talk-over in the first ~1.6 s of a reply (while the guard "
                          "learns the echo path) takes 0.8-2.2 s to barge in, so the reply often ends first (issue 10)",
                   strict=False)
async def test_live_talking_over_the_speakerphone_barges_in(system, corpus):
    by_len = sorted(corpus, key=lambda c: len(c.audio))
    first, second = (_at_level(by_len[i].audio, -20.0) for i in (len(corpus) // 3, len(corpus) // 2))
    msgs = await _talk_over(system.ws, first, second, (0.8, 0.3, 0.45, -55.0))
    cut = [m for m in msgs if m["type"] == "interrupted"]
    assert cut and cut[0]["turn_id"] == 1, [m["type"] for m in msgs]

def test_stop_drops_what_was_never_played():
    guard = EchoGuard()
    guard.on_input(np.zeros(320, np.float32), 0.02)
    guard.on_output(np.full(24000 * 5, 0.1, np.float32), 0.1)  # 5 s of reply, sent at once
    guard.stop(0.5)  # barge-in: the client played 0.4 s of it
    x = white_noise(16000 * 3, -30.0, 2)
    y = x.copy()
    for i in range(0, len(y), 320):
        guard.on_input(y[i : i + 320], 0.02 + (i + 320) / 16000)
    late = 16000 * 2  # after the cut, its delay and the room's tail, the input is the user's alone
    assert np.array_equal(x[late:], y[late:]) and not guard.audible()
