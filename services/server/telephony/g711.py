"""G.711 μ-law and A-law (ITU-T G.711) over numpy, and the 8 kHz phone <-> our rates conversions.

The codec is two lookup tables built once from the reference algorithm (the one in Sun's
g711.c that every telephony stack, and the `audioop` removed in Python 3.13, implements):
encoding is one `take` over 65,536 entries, decoding one over 256, so a 20 ms frame costs
microseconds. The caller's audio is upsampled by two with a short FIR filter of our own, so each
20 ms frame comes out whole and 3 ms late: a soxr stream releases its output in blocks of about
100 ms at these rates, and the caller's end of speech would reach the detector in bursts. The
reply (24 kHz, in chunks of a few hundred ms) is resampled with a soxr stream, so chunks join
without clicks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr

Law = Literal["mulaw", "alaw"]
PHONE_RATE = 8_000
IN_RATE = 16_000  # what the session takes (int16 LE)
OUT_RATE = 24_000  # what the session sends (float32 LE)
FRAME_BYTES = 160  # 20 ms at 8 kHz, one byte a sample: the frame size Twilio sends and plays
SILENCE = {"mulaw": 0xFF, "alaw": 0xD5}  # the code of a zero sample
ENCODINGS: dict[str, Law] = {"audio/x-mulaw": "mulaw", "audio/x-alaw": "alaw"}  # Media Streams names

_SEG_END_MULAW = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])  # 14-bit magnitudes + bias
_SEG_END_ALAW = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])  # 13-bit magnitudes


def _mulaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # μ-law codes 14 bits
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 33  # clip, then add the bias (0x84 >> 2)
    seg = np.searchsorted(_SEG_END_MULAW, mag)  # first segment whose end is >= mag
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> np.minimum(seg + 1, 8)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def _mulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_encode_table() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # A-law codes 13 bits
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    mag = np.where(negative, -pcm - 1, pcm)  # one's complement: -1 codes like 0
    seg = np.searchsorted(_SEG_END_ALAW, mag)
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant)
    return (code ^ mask).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ENCODE = {"mulaw": _mulaw_encode_table(), "alaw": _alaw_encode_table()}
_DECODE = {"mulaw": _mulaw_decode_table(), "alaw": _alaw_decode_table()}


def encode(pcm: np.ndarray, law: Law = "mulaw") -> bytes:
    """int16 samples to G.711 bytes."""
    index = np.asarray(pcm, dtype=np.int16).astype(np.int32) + 32768
    return _ENCODE[law][index].tobytes()


def decode(data: bytes, law: Law = "mulaw") -> np.ndarray:
    """G.711 bytes to int16 samples."""
    return _DECODE[law][np.frombuffer(data, dtype=np.uint8)]


def _to_int16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).round().astype(np.int16)


def _lowpass(taps: int, cutoff: float) -> np.ndarray:
    """Windowed-sinc (Blackman) low-pass FIR, `cutoff` in cycles per sample, unity gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return (h / h.sum()).astype(np.float32)


# 8 -> 16 kHz: pass the phone band (to 3.4 kHz), stop the image of it above 4.6 kHz; 95 taps at 16 kHz
UPSAMPLE_FIR = _lowpass(95, 3_900 / IN_RATE)


def inbound(payload: bytes, law: Law = "mulaw") -> bytes:
    """One phone payload to 16 kHz int16 LE, on its own (tests, one-offs). A call uses `Inbound`,
    which carries the filter's history from frame to frame."""
    return Inbound(law).push(payload)


class Inbound:
    """Phone frames (G.711, 8 kHz) to the session's input: 16 kHz int16 LE, continuous across
    frames, two samples out for each in (a zero between each pair, then the low-pass)."""

    def __init__(self, law: Law = "mulaw") -> None:
        self.law = law
        self._history = np.zeros(len(UPSAMPLE_FIR) - 1, np.float32)

    def push(self, payload: bytes) -> bytes:
        x = decode(payload, self.law).astype(np.float32) / 32768.0
        up = np.zeros(2 * len(x), np.float32)
        up[::2] = 2.0 * x  # the zeros halve the level: twice the samples restore it
        signal = np.concatenate([self._history, up])
        self._history = signal[len(signal) - len(self._history):]
        return _to_int16(np.convolve(signal, UPSAMPLE_FIR, mode="valid")).astype("<i2").tobytes()


class Outbound:
    """The session's output (24 kHz float32 LE, chunks of any size) to 20 ms G.711 frames at 8 kHz.

    What does not fill a frame waits for the next call; `flush` pads it with silence (end of a
    turn); `reset` drops it and the resampler's history (a barge-in: that audio must not play)."""

    def __init__(self, law: Law = "mulaw", src_rate: int = OUT_RATE) -> None:
        self.law, self.src_rate = law, src_rate
        self.reset()

    def reset(self) -> None:
        self._rs = soxr.ResampleStream(self.src_rate, PHONE_RATE, 1, dtype="float32", quality="HQ")
        self._pending = b""

    def push(self, pcm_f32le: bytes) -> list[bytes]:
        x = np.frombuffer(pcm_f32le[: len(pcm_f32le) // 4 * 4], dtype="<f4").astype(np.float32)
        return self._frames(self._rs.resample_chunk(x))

    def flush(self) -> list[bytes]:
        """The rest of the audio (the resampler's tail too), the last frame padded with silence."""
        frames = self._frames(self._rs.resample_chunk(np.zeros(0, np.float32), last=True))
        if self._pending:
            frames.append(self._pending + bytes([SILENCE[self.law]]) * (FRAME_BYTES - len(self._pending)))
        self.reset()
        return frames

    def _frames(self, x: np.ndarray) -> list[bytes]:
        data = self._pending + encode(_to_int16(x), self.law)
        cut = len(data) // FRAME_BYTES * FRAME_BYTES
        self._pending = data[cut:]
        return [data[i : i + FRAME_BYTES] for i in range(0, cut, FRAME_BYTES)]
