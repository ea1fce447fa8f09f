"""Audio DSP in one place: sample conversions, resampling, decoding, loudness.

Pure numpy (plus soxr for resampling and soundfile/PyAV for decoding) so every
service converts audio the same way and the code is testable on synthetic signals.
"""

from __future__ import annotations

import io
import wave

import numpy as np
import soxr

STT_RATE = 16_000  # what the session protocol sends and Whisper wants
OUT_RATE = 24_000  # what the session protocol sends back
_EPS = 1e-10


class AudioDecodeError(ValueError):
    """The bytes are not audio we can decode (the service answers 400)."""


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    """Little-endian int16 PCM to float32 in [-1, 1). An odd trailing byte is dropped."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        data = bytes(pcm)
        pcm = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def as_float(x: np.ndarray) -> np.ndarray:
    """float32 samples as they are; int16 scaled to [-1, 1) (for analysis, not for the wire)."""
    return pcm16_to_float(x) if x.dtype == np.int16 else x


def as_pcm16(x: np.ndarray) -> np.ndarray:
    """int16 samples as they are; float converted (what STT's `audio/l16` wants)."""
    return x if x.dtype == np.int16 else float_to_pcm16(x)


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16, clipped (never wraps around)."""
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).round().astype(np.int16)


def float_to_f32le(x: np.ndarray) -> bytes:
    """The wire format of output audio: float32 little endian."""
    return np.asarray(x, dtype="<f4").tobytes()


def f32le_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").astype(np.float32)


def resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling (libsoxr, high quality); a no-op when rates match."""
    x = np.asarray(x, dtype=np.float32)
    if src_rate == dst_rate or x.size == 0:
        return x
    return soxr.resample(x, src_rate, dst_rate, quality="HQ").astype(np.float32)


class StreamResampler:
    """Resamples a stream chunk by chunk without clicks at chunk borders."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self._same = src_rate == dst_rate
        self._rs = None if self._same else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ")

    def push(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self._rs is None:
            return x
        return self._rs.resample_chunk(x, last=last)


def rms_dbfs(x: np.ndarray) -> float:
    """Root-mean-square level of float audio in dB relative to full scale."""
    if x.size == 0:
        return -100.0
    return float(10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + _EPS))


def active_level(x: np.ndarray, hop: int = 160) -> float:
    """Speaking level in dBFS: the 90th percentile of 10 ms hop levels, so the pauses and
    silence around the speech do not lower it (a rough stand-in for ITU-T P.56)."""
    n = len(x) // hop
    if n == 0:
        return -100.0
    x = as_float(x)
    power = np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)
    return float(10.0 * np.log10(np.percentile(power, 90) + _EPS))


def to_mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1).astype(np.float32) if x.ndim == 2 else x.astype(np.float32)


def decode_audio(data: bytes, target_rate: int = STT_RATE) -> np.ndarray:
    """Decode WAV/FLAC/OGG/MP3 (any rate, any channels) to mono float32 at target_rate.

    Raw headerless bytes are not guessed at here; callers that accept raw PCM say so.
    """
    if not data:
        raise AudioDecodeError("empty upload")
    try:
        import soundfile as sf

        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        return resample(to_mono(x), rate, target_rate)
    except Exception:  # noqa: BLE001 - fall through to PyAV, which knows MP3 and more
        pass
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise AudioDecodeError("no audio stream in upload")
            rs = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
            parts = [
                f.to_ndarray().reshape(-1)
                for frame in container.decode(audio=0)  # type: ignore[union-attr]
                for f in rs.resample(frame)
            ]
            parts += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    except AudioDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not audio"
        raise AudioDecodeError(f"could not decode audio: {type(exc).__name__}") from exc
    if not parts:
        raise AudioDecodeError("upload holds no audio samples")
    return np.concatenate(parts).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int) -> bytes:
    """16-bit PCM mono WAV, for debugging endpoints and test fixtures."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(float_to_pcm16(x).tobytes())
    return buf.getvalue()


def split_chunks(x: np.ndarray, rate: int, max_ms: int) -> list[np.ndarray]:
    """Cut audio into pieces of at most max_ms so playback can start early."""
    step = max(1, rate * max_ms // 1000)
    return [x[i : i + step] for i in range(0, len(x), step)]
