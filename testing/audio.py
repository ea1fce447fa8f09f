"""Audio simulators for tests and benchmarks: a synthetic room (for echo) and noise."""

from __future__ import annotations

import httpx
import numpy as np

from shared.audio import STT_RATE, decode_audio, float_to_pcm16


def room_impulse_response(rt60: float, rate: int = STT_RATE, drr_db: float = 0.0, seed: int = 0) -> np.ndarray:
    """A synthetic room: a direct path, then exponentially decaying noise (60 dB down at `rt60`)
    carrying `drr_db` less energy than the direct path (0 dB: as much). For echo simulations."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, int(rt60 * rate)) / rate
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    return np.concatenate([[1.0], tail]).astype(np.float32)


def white_noise(n: int, level_dbfs: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise at `level_dbfs` RMS."""
    return (np.random.default_rng(seed).standard_normal(n) * 10 ** (level_dbfs / 20)).astype(np.float32)


def cough(seconds: float = 0.4, seed: int = 3) -> np.ndarray:
    """A cough-like burst (noise under a Hann window, ~-18 dBFS at its peak): a sound over our
    reply that is not words. int16, 16 kHz."""
    n = int(seconds * STT_RATE)
    return (np.hanning(n) * np.random.default_rng(seed).standard_normal(n) * 0.25 * 32767).astype(np.int16)


def synthesized(tts_url: str, text: str) -> np.ndarray:
    """`text` in our own TTS voice, as a microphone would give it: 16 kHz int16 (blocking)."""
    r = httpx.post(f"{tts_url}/tts", json={"text": text}, timeout=30)
    r.raise_for_status()
    return float_to_pcm16(decode_audio(r.content, STT_RATE))
