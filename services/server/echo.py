"""Echo guard: keep our own voice, played back by a speakerphone, out of the turn-taking.

A client without echo cancellation plays the assistant's audio and records it again,
delayed (0-0.6 s: network, audio buffers), attenuated and coloured by its speaker, and
smeared by the room. We keep the outgoing audio as a reference, placed on the input's
sample clock at the time the client plays it (the session's play clock), and model
the echo in 16 spectral bands per 10 ms hop: band power of the echo = per-band gain x
the reference's band power at the echo delay, held over a decaying tail (reverb).
Delay and gains are measured from the signals themselves: the delay by correlating
the input's log band envelopes with the reference's over 0-`max_delay`, the gains as
a high percentile of input/reference power in hops without near-end speech. Until a
delay is found, the model assumes any delay (a conservative peak over the whole
range), so the very first words played are covered too.

What the input holds beyond that model (the residual) is someone else talking. The
guard gates the microphone hop by hop: while our reference could be audible, hops
the model explains are attenuated by 50 dB before the speech detector (and STT) see
them, and hops with a clear residual pass unchanged, so a person talking over the
assistant still starts an utterance and barges in. Away from our playback (and its
echo tail) the input passes untouched.

Pure numpy, bounded memory (ring buffers), about 0.1 ms per 20 ms frame.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from shared.audio import OUT_RATE, STT_RATE

HOP_S = 0.01  # seconds per analysis hop
_HOP = int(STT_RATE * HOP_S)  # 160 input samples
_HOP_OUT = int(OUT_RATE * HOP_S)  # 240 reference samples
_EDGES = np.unique(np.geomspace(4, 141, 17).round().astype(int))  # 50 Hz bins: 200 Hz .. 7 kHz, both rates
_BANDS = len(_EDGES) - 1
_RING = 4096  # hops of reference kept (41 s): replies are sent ahead of playback
_HIST = 256  # hops of input history used by the delay and gain estimates
_TINY = 1e-12
_NO_PATH = 160  # hops of our playback without the input following it (headphones): stop guarding


def _band_powers(frames: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(hops, 2*hop) samples -> (hops, bands) mean power per band (rate independent)."""
    spec = np.fft.rfft(frames * window, axis=1)
    p = spec.real**2 + spec.imag**2
    cum = np.concatenate([np.zeros((len(p), 1)), np.cumsum(p, axis=1)], axis=1)
    return ((cum[:, _EDGES[1:]] - cum[:, _EDGES[:-1]]) * (2.0 / (frames.shape[1] * np.sum(window**2)))).astype(np.float32)


class _Ring:
    """The last `size` band vectors."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros((size, _BANDS), np.float32)
        self.n = 0

    def push(self, v: np.ndarray) -> None:
        self.buf[self.n % len(self.buf)] = v
        self.n += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.n, len(self.buf))]

    def clear(self) -> None:
        self.n = 0


class EchoGuard:
    def __init__(self, window: float = 0.5, max_delay: float = 0.6, threshold: float = 0.85, tail: float = 0.6,
                 rt60: float = 0.6) -> None:
        self.enabled = threshold <= 1.0  # SERVER_ECHO_THRESHOLD > 1 turns the guard off
        self.window = window
        self._d_max = int(round(max_delay / HOP_S))
        self._tail = int(round(tail / HOP_S))
        self._span = self._d_max + self._tail + 2  # lookback of the echo model, hops
        # conservative reverb: the held reference decays by 60 dB per `rt60`
        self._decay = 10 ** (-6.0 * HOP_S / rt60)
        self._lags = np.arange(self._span)
        # any delay: the loudest reference of the whole delay range, then the room's decay
        self._w_any = np.where(self._lags <= self._d_max, 1.0, self._decay ** (self._lags - self._d_max))[:, None]
        self._w_d: tuple[int, np.ndarray] | None = None
        self._w_in, self._w_out = np.hanning(2 * _HOP + 1)[:-1], np.hanning(2 * _HOP_OUT + 1)[:-1]
        self._ref = np.zeros((_RING, _BANDS), np.float32)  # reference band power by input hop index
        self._ref_last = -(10**9)  # newest hop index holding reference
        self._pending: deque[tuple[float, np.ndarray]] = deque()  # (wall time of first hop end, powers) to place
        self._out_tail = np.zeros(0, np.float32)  # reference samples short of a hop
        self._out_next = -1.0  # wall time at which `_out_tail`'s first sample plays
        self._out_prev = np.zeros(_HOP_OUT, np.float32)
        self._t0: float | None = None  # wall time of input sample 0
        self._hops = 0  # input hops analysed
        self._in_buf = np.zeros(0, np.float32)
        self._in_prev = np.zeros(_HOP, np.float32)
        self._noise = np.full(_BANDS, 1e-7, np.float32)
        self._x_hist = np.zeros((_HIST, _BANDS), np.float32)  # input band powers
        self._r_hist = np.zeros((_HIST + self._d_max, _BANDS), np.float32)  # reference at lag 0, aligned
        self._ratio_any = _Ring(300)  # log10(input / any-delay model), hops of echo only
        self._ratio_d = _Ring(300)  # log10(input / delay model)
        self._gain_any = np.full(_BANDS, 0.3, np.float32)  # log10 gain priors: echo up to +3 dB over reference
        self._gain_d = np.full(_BANDS, 0.3, np.float32)  # log10 gains over the held reference at the delay
        self.delay: int | None = None  # hops, once measured
        self._ref_hops = 0  # input hops so far during which our reference played
        self._matched_at = 0  # `_ref_hops` when the input last followed the reference
        self._delay_votes: deque[int] = deque(maxlen=3)
        self._near: deque[tuple[bool, bool]] = deque(maxlen=int(round(window / HOP_S)))  # (voiced, near-end)
        self._hold = 0  # hops the gate stays open after near-end speech
        self._near_run = 0  # consecutive near-end hops: one alone is estimation noise
        self.gain = 1.0  # gate gain of the latest hop

    # ------------------------------------------------------------------ reference

    def on_output(self, chunk24k: np.ndarray, play_start: float) -> None:
        """A chunk the client will play starting at wall time `play_start`."""
        x = np.asarray(chunk24k, np.float32)
        if abs(play_start - (self._out_next + len(self._out_tail) / OUT_RATE)) > 0.005:  # not back to back: a new burst
            self._out_tail, self._out_prev = np.zeros(0, np.float32), np.zeros(_HOP_OUT, np.float32)
            self._out_next = play_start
        buf = np.concatenate([self._out_tail, x])
        k = len(buf) // _HOP_OUT
        if k:
            frames = np.concatenate([self._out_prev, buf[: k * _HOP_OUT]])
            win = np.lib.stride_tricks.sliding_window_view(frames, 2 * _HOP_OUT)[::_HOP_OUT]
            self._pending.append((self._out_next + HOP_S, _band_powers(win[:k], self._w_out)))
            self._out_prev = buf[(k - 1) * _HOP_OUT : k * _HOP_OUT]
        self._out_tail = buf[k * _HOP_OUT :]
        self._out_next += k * HOP_S

    def stop(self, at: float) -> None:
        """Playback was cut at wall time `at` (barge-in: the client drops what it holds)."""
        self._out_tail, self._out_next = np.zeros(0, np.float32), -1.0
        if self._t0 is None:
            self._pending.clear()
            return
        self._place()
        cut = int(round((at - self._t0) / HOP_S))
        if self._ref_last >= cut:
            self._ref[np.arange(max(cut, self._hops - self._span), self._ref_last + 1) % _RING] = 0.0
            self._ref_last = cut - 1

    def _place(self) -> None:
        """Put pending reference hops on the input's hop clock."""
        assert self._t0 is not None
        while self._pending:
            t_end, p = self._pending.popleft()
            first = int(round((t_end - self._t0) / HOP_S)) - 1
            lo = max(first, self._hops - self._span)  # older than the model looks back: useless
            hi = min(first + len(p), self._hops + _RING - self._span - 1)  # would overwrite what is still needed
            if hi > lo:
                self._ref[np.arange(lo, hi) % _RING] = p[lo - first : hi - first]
                self._ref_last = max(self._ref_last, hi - 1)

    # ------------------------------------------------------------------ input

    def on_input(self, x16k: np.ndarray, now: float) -> np.ndarray:
        """Analyse a microphone frame that ended at wall time `now`, and gate it IN PLACE.

        Returns `x16k` itself, attenuated where it holds only our own echo (the caller
        feeds it to the speech detector); untouched away from our playback."""
        n_before = self._hops * _HOP + len(self._in_buf)
        obs = now - (n_before + len(x16k)) / STT_RATE
        if self._t0 is None or abs(obs - self._t0) > 0.2:
            self._t0 = obs  # first frame, or the client's stream jumped
        else:
            self._t0 += 0.02 * (obs - self._t0)  # network jitter averages out
        self._place()
        buf = np.concatenate([self._in_buf, x16k])
        k = len(buf) // _HOP
        gains = np.full(len(x16k), self.gain, np.float32)
        if k:
            frames = np.concatenate([self._in_prev, buf[: k * _HOP]])
            win = np.lib.stride_tricks.sliding_window_view(frames, 2 * _HOP)[::_HOP][:k]
            powers = _band_powers(win, self._w_in)
            off = len(self._in_buf)  # buf index of x16k[0]
            for j in range(k):
                g = self._hop(powers[j])
                a, b = max(0, j * _HOP - off), max(0, (j + 1) * _HOP - off)
                gains[a:b] = g
            gains[max(0, k * _HOP - off) :] = self.gain
            self._in_prev = buf[(k - 1) * _HOP : k * _HOP].copy()
        self._in_buf = buf[k * _HOP :].copy()
        if self.enabled and np.any(gains != 1.0):
            x16k *= gains
        return x16k

    def _hop(self, x: np.ndarray) -> float:
        """One input hop's band powers in; the gate gain for that hop out."""
        i = self._hops
        self._hops += 1
        # noise floor per band: the quietest recent hop, rising slowly (0.9 dB/s); never below -100 dB
        self._noise = np.maximum(np.where(x < self._noise, x, self._noise * 1.002), 1e-10 / _BANDS).astype(np.float32)
        self._x_hist[i % _HIST] = x
        r_now = self._ref[i % _RING]
        self._r_hist[i % len(self._r_hist)] = r_now
        stale = (i - self._span) % _RING
        self._ref[stale] = 0.0  # free the slot for reference far ahead
        if i - self._ref_last > self._span or not self.enabled:
            self._near.append((False, False))
            self._hold = 0
            self.gain = 1.0
            return 1.0
        if float(np.sum(r_now)) > 0.0:
            self._ref_hops += 1
        if self._ref_hops - self._matched_at > _NO_PATH:  # we play, but the input never follows: no echo path
            self.delay = None
            voiced = float(np.sum(x)) > 8.0 * float(np.sum(self._noise))
            self._near.append((voiced, voiced))
            self._hold = 0
            self.gain = 1.0
            return 1.0
        recent = self._ref[(i - self._lags) % _RING]  # (lag, band)
        m_any = np.max(recent * self._w_any, axis=0)
        held = None
        echo = m_any * 10**self._gain_any
        if self.delay is not None:
            d = self.delay
            held = np.max(recent * self._w_delay(d), axis=0)
            if self._ratio_d.n >= 30:
                echo = held * 10**self._gain_d
        residual = np.maximum(x - 2.0 * echo - 4.0 * self._noise, 0.0)
        total = float(np.sum(x))
        res = float(np.sum(residual))
        voiced = total > 8.0 * float(np.sum(self._noise))
        near = voiced and res > 0.25 * total and res > 4.0 * float(np.sum(self._noise))
        self._near.append((voiced, near))
        if not near and voiced:  # echo only: what it tells about the path
            lx = np.log10(x + _TINY)
            if np.all(m_any > 1e-9):
                self._ratio_any.push(lx - np.log10(m_any))
            if held is not None and np.all(held > 1e-9):
                self._ratio_d.push(lx - np.log10(held))
        if i % 10 == 0:
            self._estimate_gains()
        elif i % 10 == 5:
            self._estimate_delay()
        self._near_run = self._near_run + 1 if near else 0
        self._hold = 8 if self._near_run >= 2 else max(0, self._hold - 1)
        # echo only: down to the noise floor, not below it, so that the speech detector's noise
        # estimate stays the room's own and the input returning at full level is not "speech"
        self.gain = 1.0 if self._hold else min(1.0, float(np.sqrt(np.sum(self._noise) / max(total, _TINY))))
        return self.gain

    def _estimate_gains(self) -> None:
        """Per band: how loud our echo gets relative to the model (a high percentile, so most
        hops of echo stay under it)."""
        # the any-delay model is a bound for the first words, learnt from few hops: near its maximum
        for ring, attr, pct in ((self._ratio_any, "_gain_any", 99), (self._ratio_d, "_gain_d", 90)):
            if ring.n >= 30:
                setattr(self, attr, np.percentile(ring.values(), pct, axis=0).astype(np.float32))

    def _estimate_delay(self) -> None:
        """The lag at which the input's log band envelopes follow the reference's best."""
        t = min(self._hops, _HIST)
        if t < 60:
            return
        d = self._d_max
        idx = np.arange(self._hops - t, self._hops)
        lx = np.log10(self._x_hist[idx % _HIST] + _TINY)
        r = self._r_hist[np.arange(self._hops - t - d, self._hops) % len(self._r_hist)]
        if np.mean(r[d:].sum(axis=1) > 0) < 0.2:
            return  # too little of our voice in the window to tell
        lr = np.log10(r + _TINY)
        lx = np.maximum(lx, lx.max(axis=0) - 5.0)  # 50 dB below the peak is all alike
        lr = np.maximum(lr, lr.max(axis=0) - 5.0)
        xc = lx - lx.mean(axis=0)
        size = 1 << (t + d).bit_length()
        cross = np.fft.irfft(np.conj(np.fft.rfft(xc, size, axis=0)) * np.fft.rfft(lr, size, axis=0), size, axis=0)
        num = cross[d::-1].sum(axis=1)  # lag l pairs input hop k with reference hop k - l
        c1 = np.concatenate([np.zeros((1, _BANDS)), np.cumsum(lr, axis=0)])
        c2 = np.concatenate([np.zeros((1, _BANDS)), np.cumsum(lr**2, axis=0)])
        starts = d - np.arange(d + 1)
        s1 = c1[starts + t] - c1[starts]
        s2 = c2[starts + t] - c2[starts]
        var_r = np.sum(s2 - s1**2 / t, axis=1)
        corr = num / np.sqrt(np.maximum(np.sum(xc**2) * var_r, _TINY))
        best = int(np.argmax(corr))
        if corr[best] < 0.6:
            return
        self._matched_at = self._ref_hops
        self._delay_votes.append(best)
        if len(self._delay_votes) == 3 and max(self._delay_votes) - min(self._delay_votes) <= 2:
            if self.delay is None or abs(self.delay - best) > 2:  # a new path: measure it afresh
                self._ratio_d.clear()
                self._gain_d = self._gain_any.copy()
            self.delay = best

    def _w_delay(self, d: int) -> np.ndarray:
        """Known delay: the reference within +-20 ms of it (play clock jitter), then the room's decay."""
        if self._w_d is None or self._w_d[0] != d:
            lags = self._lags
            w = np.where(lags < d - 2, 0.0, np.where(lags <= d + 2, 1.0, self._decay ** np.maximum(lags - d - 2, 0)))
            self._w_d = (d, w[:, None])
        return self._w_d[1]

    def audible(self) -> bool:
        """Could the input still hold our echo (playback, its delay and the room's tail)?"""
        return self.enabled and self._hops - self._ref_last <= self._span

    def is_echo(self) -> bool:
        """Is the input of the last `window` our own echo (speech there, but no near-end speech)?"""
        if not self.enabled or not self._near:
            return False
        voiced = sum(v for v, _ in self._near)
        near = sum(n for _, n in self._near)
        return voiced >= 5 and (near < 6 or near < 0.15 * voiced)
