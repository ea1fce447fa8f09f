"""Echo guard on real speech: our own voice coming back is recognised, the user's is not."""

import numpy as np

from services.server.echo import EchoGuard
from shared.audio import resample


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
