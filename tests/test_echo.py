"""Echo guard on real speech: our own voice coming back is recognised, the user's is not."""

import numpy as np

from services.server.echo import EchoGuard, repeats_our_words
from shared.audio import resample
from testing.audio import room_impulse_response, white_noise
from tests.conftest import trimmed


def feed(guard: EchoGuard, reference16k: np.ndarray, mic16k: np.ndarray, delay: float) -> bool:
    """Play `reference` from t=0 and push `mic` in 20 ms frames as if recorded in real time."""
    guard.on_output(resample(reference16k, 16000, 24000), play_start=0.0)
    for i in range(0, len(mic16k), 320):
        guard.on_input(mic16k[i : i + 320], now=(i + 320) / 16000 + delay)
    return guard.is_echo()


def test_own_voice_is_echo(corpus):
    rng = np.random.default_rng(0)
    for clip in corpus[::4]:
        x = clip.audio[:32000].astype(np.float32) / 32768
        room = np.convolve(x, np.exp(-np.arange(600) / 150.0) * 0.004)[: len(x)]  # a reverberant tail at about the direct level
        mic = 0.4 * x + room + rng.standard_normal(len(x)).astype(np.float32) * 0.001
        assert feed(EchoGuard(), x, mic, delay=0.12), clip.id


def test_someone_else_talking_is_not_echo(corpus):
    false_alarms = 0
    for a, b in zip(corpus[::3], corpus[1::3], strict=False):
        ours = a.audio[:32000].astype(np.float32) / 32768
        user = np.concatenate([np.zeros(16000, np.float32), b.audio[:16000].astype(np.float32) / 32768])
        false_alarms += feed(EchoGuard(), ours, user, delay=0.1)
    assert false_alarms == 0


def test_silence_and_no_reference_are_not_echo():
    assert not EchoGuard().is_echo()
    g = EchoGuard()
    assert not feed(g, np.zeros(16000, np.float32), np.zeros(16000, np.float32), 0.0)


def _check_after(guard: EchoGuard, reply16k: np.ndarray, mic16k: np.ndarray, lead: float = 1.0, clock_late: float = 0.0) -> bool:
    """Our reply plays from `lead` s on; the mic (with `lead` s of room noise first) is pushed
    in 20 ms frames in real time, and the guard is asked at its end, as the session asks
    once speech has lasted a backchannel's length. `clock_late`: our play clock starts the
    reply that much after the client really plays it."""
    rng = np.random.default_rng(1)
    guard.on_output(resample(reply16k, 16000, 24000), play_start=lead + clock_late)
    mic = np.concatenate([np.zeros(int(lead * 16000), np.float32), mic16k])
    mic = mic + rng.standard_normal(len(mic)).astype(np.float32) * 0.0005
    for i in range(0, len(mic), 320):
        guard.on_input(mic[i : i + 320], now=(i + 320) / 16000)
    return guard.is_echo()


def test_talking_over_our_reply_is_never_echo(corpus):
    """A user who goes on while a reply plays: their onset may fall anywhere in our speech,
    and with 71 delays tried one window alone matched by chance (7 of these 864)."""
    clips = [c.audio.astype(np.float32) / 32768 for c in corpus]
    onsets = [trimmed(c.audio, drop_db=30).astype(np.float32) / 32768 for c in corpus]
    false_alarms = []
    for i, ours in enumerate(clips):
        for j in ((i + 5) % len(clips), (i + 11) % len(clips)):
            user = onsets[j][: int(0.62 * 16000)]
            for offset in np.arange(0.2, 2.0, 0.1):
                mic = np.concatenate([np.zeros(int(offset * 16000), np.float32), user])
                if _check_after(EchoGuard(), np.concatenate([ours, ours]), mic):
                    false_alarms.append((corpus[i].id, corpus[j].id, round(float(offset), 1)))
    assert false_alarms == []


def test_echo_grid_is_recognised(corpus):
    """Our voice back at -50 (a client playing ahead of our clock) to 500 ms delay, gains
    0.3-1.0, dry or with a room's tail, checked 0.62 s after the echo starts, 0.5 s and 1 s
    into the reply."""
    clips = [trimmed(c.audio, drop_db=30).astype(np.float32) / 32768 for c in corpus[::2]]
    room = np.exp(-np.arange(4000) / 1200.0) * 0.0015
    tried, missed = 0, []
    for k, ours in enumerate(clips):
        for delay in (-0.05, 0.0, 0.1, 0.2, 0.3, 0.45, 0.5):
            for gain in (0.3, 0.6, 1.0):
                for reverb in (False, True):
                    for into in (0.0, 0.5, 1.0):
                        mic = gain * ours
                        if reverb:
                            mic = mic + np.convolve(mic, room)[: len(mic)]
                        mic = np.concatenate([np.zeros(int(max(delay, 0) * 16000), np.float32), mic.astype(np.float32)])
                        n = int((max(delay, 0) + into + 0.62) * 16000)
                        if n > len(mic):
                            continue
                        tried += 1
                        if not _check_after(EchoGuard(), ours, mic[:n], clock_late=max(-delay, 0)):
                            missed.append((k, delay, gain, reverb, into))
    assert tried > 300
    assert len(missed) <= tried // 100, missed


def test_our_words_heard_back_are_told_from_the_users():
    said = "Oh, he jumped in the club. That was a long time ago, what happened then?"
    assert repeats_our_words("He jumped in the club", said)
    assert repeats_our_words("a long time ago", said)
    assert not repeats_our_words("No, wait, I meant the other one.", said)
    assert not repeats_our_words("Stop.", said)
    assert not repeats_our_words("", said)


def test_a_reverberant_room_echo_is_recognised_by_its_smeared_contour(corpus):
    """A speakerphone in a room (RT60 0.45 s, as much reverberant as direct energy, hiss at
    -55 dBFS): compared dry, the contour caught about 1 echo in 5; through the model rooms
    (RT60 0.3 and 0.7 s, neither this one) about 2 in 3."""
    rir = room_impulse_response(0.45)
    clips = [trimmed(c.audio, drop_db=30).astype(np.float32) / 32768 for c in corpus[::4]]
    tried = caught = 0
    for k, ours in enumerate(clips):
        for delay in (0.0, 0.3):
            for gain in (0.3, 1.0):
                for into in (0.0, 0.5):
                    mic = np.concatenate([np.zeros(int(delay * 16000), np.float32), np.convolve(gain * ours, rir)[: len(ours)]])
                    mic = mic + white_noise(len(mic), -55, seed=k)
                    n = int((delay + into + 0.62) * 16000)
                    if n <= len(mic):
                        tried += 1
                        caught += _check_after(EchoGuard(), ours, mic[:n])
    assert tried >= 30 and caught >= 0.5 * tried, (caught, tried)
