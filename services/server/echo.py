"""Echo guard: is the "speech" we hear just our own voice coming back through the mic?

A client without echo cancellation plays the assistant's audio and records it
again. We keep the outgoing audio as a reference, placed on the wall-clock time at
which the client plays it (the session's play clock), and compare the loudness
contour (10 ms log-energy frames) of the recent microphone input with the
reference at delays from `min_delay` up to `max_delay` (negative: a client plays a
little ahead of our play clock). Loudness contours survive gain, phase and room
filtering far better than waveforms. Two different utterances can share a
rough contour (both start loud after silence), so the contour's frame-to-frame
changes (syllable onsets) must match too (level/delta correlations >= 0.85/0.6).

One window that matches is not enough: over a reply that plays on while the user
talks, 71 delays give chance many tries, and one window alone matched 7 of 864 user
onsets over corpus speech (up to 0.94/0.77). An echo keeps its delay, a coincidence
does not: the window 0.2 s earlier must match too (at 0.8/0.5) at a delay within
30 ms. On the grid of tests/test_echo.py that took chance matches to 0 of 864; echoes
at gains 0.3-1.0 are all still caught, at gain 0.1 (20 dB down) 95% instead of 97%.

A room's reverb fills the pauses between words, so a speakerphone's echo follows our
contour only as the room smears it: the reference is also compared through two model
rooms (`ROOMS`, RT60 0.3 and 0.7 s). Over a synthetic RT60 0.45 s room with as much
reverberant as direct energy, that took the contour's hit rate from 22% to 69% (gains 0.1-1.0), with
0 of the 864 chance matches; the words check (`repeats_our_words`) catches most of the rest.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from shared.audio import OUT_RATE, STT_RATE
from shared.wer import normalise

_FRAME = 0.01  # seconds per envelope frame
# rooms the reference is also compared through: (RT60 s, direct-to-reverberant dB), a dry office to a hall
ROOMS = ((0.3, 0.0), (0.7, 0.0))
_FLOOR_DB = -70.0


def _through_room(env: np.ndarray, rt60: float, drr_db: float) -> np.ndarray:
    """A loudness contour as a room would smear it: the direct sound plus an exponentially
    decaying tail (60 dB down after `rt60`) carrying `drr_db` less energy than the direct path."""
    power = 10 ** (env.astype(np.float64) / 10)
    a = 10 ** (-6 * _FRAME / rt60)  # the tail's power decay per frame
    tail, acc = np.empty_like(power), 0.0
    for i, p in enumerate(power):
        acc = a * acc + (1 - a) * p
        tail[i] = acc
    return np.maximum(10 * np.log10(power + 10 ** (-drr_db / 10) * tail + 1e-12), _FLOOR_DB).astype(np.float32)


def _envelope(x: np.ndarray, rate: int) -> np.ndarray:
    n = int(rate * _FRAME)
    k = len(x) // n
    if k == 0:
        return np.zeros(0, np.float32)
    e = np.mean(np.square(x[: k * n].reshape(k, n), dtype=np.float64), axis=1)
    return np.maximum(10 * np.log10(e + 1e-12), _FLOOR_DB).astype(np.float32)


class EchoGuard:
    def __init__(self, window: float = 0.5, min_delay: float = -0.1, max_delay: float = 0.6, threshold: float = 0.85, delta_threshold: float = 0.6,
                 keep: float = 30.0, confirm_back: float = 0.2, confirm: tuple[float, float] = (0.8, 0.5),
                 rooms: tuple[tuple[float, float], ...] = ROOMS) -> None:
        self.window, self.min_delay, self.max_delay, self.confirm_back = window, min_delay, max_delay, confirm_back
        self.rooms = rooms  # (rt60 s, direct-to-reverberant dB) of rooms the reference is also compared through
        self.tail = max((r[0] for r in rooms), default=0.0) / 2  # s of reference before the window a tail reads
        self.threshold, self.delta_threshold, self.confirm = threshold, delta_threshold, confirm
        self._ref: deque[tuple[float, np.ndarray]] = deque()  # (play start wall time, envelope)
        self._keep = keep
        self._inp: deque[float] = deque(maxlen=int((window + confirm_back + 1.0) / _FRAME))
        self._inp_end = 0.0  # wall time of the newest input frame's end
        self._tail = np.zeros(0, np.float32)

    def on_output(self, chunk24k: np.ndarray, play_start: float) -> None:
        """A chunk the client will play starting at wall time `play_start`."""
        self._ref.append((play_start, _envelope(chunk24k, OUT_RATE)))
        while self._ref and self._ref[0][0] < play_start - self._keep:
            self._ref.popleft()

    def cut(self, at: float) -> None:
        """The client stopped playing at wall time `at` (barge-in, or a pause): what we had
        placed after it was never played and cannot come back as echo."""
        kept: deque[tuple[float, np.ndarray]] = deque()
        for start, env in self._ref:
            if start < at:
                kept.append((start, env[: max(0, int((at - start) / _FRAME))]))
        self._ref = kept

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

    def _matches(self, back: float, level_min: float, delta_min: float) -> list[float]:
        """Delays at which the `window` of input ending `back` s ago follows the reference
        (as it left us, or as one of `rooms` would have smeared it)."""
        m, k = int(self.window / _FRAME), int(round(back / _FRAME))
        if len(self._inp) < m + k or not self._ref:
            return []
        inp = np.asarray(list(self._inp)[len(self._inp) - k - m : len(self._inp) - k], np.float32)
        if inp.std() < 1.0:
            return []
        d_inp = np.diff(inp)
        # the reference over every delay at once, with the room's tail from before the window:
        # delay j*_FRAME past min_delay reads ref[pre + n_lags-1 - j :][:m]
        n_lags, pre = int(round((self.max_delay - self.min_delay) / _FRAME)) + 1, int(self.tail / _FRAME)
        first = self._inp_end - back - _FRAME * (m - 0.5) - self.max_delay - pre * _FRAME
        ref_all = self._reference(first + _FRAME * np.arange(pre + n_lags - 1 + m))
        lags = set()
        for ref_room in [ref_all] + [_through_room(ref_all, *room) for room in self.rooms]:
            for j in range(n_lags):
                ref = ref_room[pre + n_lags - 1 - j :][:m]
                if ref.std() < 1.0:
                    continue
                if np.corrcoef(inp, ref)[0, 1] >= level_min and np.corrcoef(d_inp, np.diff(ref))[0, 1] >= delta_min:
                    lags.add(round(self.min_delay + j * _FRAME, 3))
        return sorted(lags)

    def is_echo(self) -> bool:
        """Does the recent input follow the reference's loudness contour, at a steady delay?"""
        now = self._matches(0.0, self.threshold, self.delta_threshold)
        if not now:
            return False
        before = self._matches(self.confirm_back, *self.confirm)
        return any(abs(a - b) <= 0.03 + 1e-9 for a in now for b in before)


def repeats_our_words(heard: str, said: str, share: float = 0.5) -> bool:
    """The second look, for speech over our reply whose contour did not match (a room's
    reverb smears it; ~1 in 20 echoes at 20 dB down): is what STT heard made of the words
    we just said? A person talking over us says their own words. Half is enough: Whisper
    mishears a reverberant echo ("What's going on?" came back as "let us going on.")."""
    words, ours = normalise(heard), set(normalise(said))
    # no words at all is not a repeat: the session decides what silence means (Whisper's noise
    # guard drops a quiet echo, and also the first 0.6 s of a person barging in)
    return bool(words) and sum(w in ours for w in words) >= share * len(words)
