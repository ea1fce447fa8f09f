"""Echo guard: is the "speech" we hear just our own voice coming back through the mic?

A client without echo cancellation plays the assistant's audio and records it
again. We keep the outgoing audio as a reference, placed on the wall-clock time at
which the client plays it (the session's play clock), and compare the loudness
contour (10 ms log-energy frames) of the recent microphone input with the
reference at delays up to `max_delay`. Loudness contours survive gain, phase and
room filtering far better than waveforms. Two different utterances can share a
rough contour (both start loud after silence), so the contour's frame-to-frame
changes (syllable onsets) must match too: on corpus speech, independent pairs
reached level/delta correlations of at most 0.95/0.70, never both >= 0.85/0.6,
while simulated echoes (gain, delay, reverb, noise) passed 97% of the time.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from shared.audio import OUT_RATE, STT_RATE

_FRAME = 0.01  # seconds per envelope frame
_FLOOR_DB = -70.0


def _envelope(x: np.ndarray, rate: int) -> np.ndarray:
    n = int(rate * _FRAME)
    k = len(x) // n
    if k == 0:
        return np.zeros(0, np.float32)
    e = np.mean(np.square(x[: k * n].reshape(k, n), dtype=np.float64), axis=1)
    return np.maximum(10 * np.log10(e + 1e-12), _FLOOR_DB).astype(np.float32)


class EchoGuard:
    def __init__(self, window: float = 0.5, max_delay: float = 0.6, threshold: float = 0.85, delta_threshold: float = 0.6,
                 keep: float = 30.0) -> None:
        self.window, self.max_delay = window, max_delay
        self.threshold, self.delta_threshold = threshold, delta_threshold
        self._ref: deque[tuple[float, np.ndarray]] = deque()  # (play start wall time, envelope)
        self._keep = keep
        self._inp: deque[float] = deque(maxlen=int((window + 1.0) / _FRAME))
        self._inp_end = 0.0  # wall time of the newest input frame's end
        self._tail = np.zeros(0, np.float32)

    def on_output(self, chunk24k: np.ndarray, play_start: float) -> None:
        """A chunk the client will play starting at wall time `play_start`."""
        self._ref.append((play_start, _envelope(chunk24k, OUT_RATE)))
        while self._ref and self._ref[0][0] < play_start - self._keep:
            self._ref.popleft()

    def on_input(self, x16k: np.ndarray, now: float) -> None:
        buf = np.concatenate([self._tail, x16k])
        n = int(STT_RATE * _FRAME)
        k = len(buf) // n
        self._inp.extend(_envelope(buf[: k * n], STT_RATE).tolist())
        self._tail = buf[k * n :]
        self._inp_end = now - len(self._tail) / STT_RATE
        horizon = now - self.window - self.max_delay - 1.0  # older reference cannot match any more
        while self._ref and self._ref[0][0] + len(self._ref[0][1]) * _FRAME < horizon:
            self._ref.popleft()

    def _reference(self, times: np.ndarray) -> np.ndarray:
        out = np.full(len(times), _FLOOR_DB, np.float32)
        lo, hi = times[0], times[-1]
        for start, env in self._ref:
            if start > hi or start + len(env) * _FRAME < lo:
                continue  # does not overlap the window: skip the work
            idx = np.floor((times - start) / _FRAME).astype(int)
            ok = (idx >= 0) & (idx < len(env))
            out[ok] = env[idx[ok]]
        return out

    def is_echo(self) -> bool:
        """Does the last `window` of input follow the reference's loudness contour?"""
        m = int(self.window / _FRAME)
        if len(self._inp) < m or not self._ref:
            return False
        inp = np.asarray(list(self._inp)[-m:], np.float32)
        times = self._inp_end - _FRAME * (np.arange(m)[::-1] + 0.5)
        if inp.std() < 1.0:
            return False
        d_inp = np.diff(inp)
        for lag in np.arange(0.0, self.max_delay + 1e-9, _FRAME):
            ref = self._reference(times - lag)
            if ref.std() < 1.0:
                continue
            if np.corrcoef(inp, ref)[0, 1] >= self.threshold and np.corrcoef(d_inp, np.diff(ref))[0, 1] >= self.delta_threshold:
                return True
        return False
