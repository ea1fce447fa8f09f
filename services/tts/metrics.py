"""Prometheus metrics of the TTS service (served on /metrics by create_service)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import numpy as np
from prometheus_client import Gauge, Histogram

from services.tts.engines.base import TtsEngine

_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
FIRST_AUDIO = Histogram("s2s_tts_first_audio_seconds", "Time from a request to its first audio chunk", ["engine"], buckets=_BUCKETS)
SYNTHESIS = Histogram("s2s_tts_synthesis_seconds", "Time to synthesize one whole request", ["engine"], buckets=_BUCKETS)
ACTIVE_STREAMS = Gauge("s2s_tts_active_streams", "Open WebSocket streams", ["route"])
QUEUE_DEPTH = Gauge("s2s_tts_queue_depth", "Texts waiting to be spoken, all streams together")
GATE_WAIT = Histogram("s2s_tts_gate_wait_seconds", "Wait for a synthesis worker: a stream's first text, or a later one",
                      ["text"], buckets=_BUCKETS)


async def timed_stream(engine: TtsEngine, text: str, voice: str | None, chunk_ms: int) -> AsyncIterator[np.ndarray]:
    """engine.stream() with its time to first audio and total time recorded."""
    t0 = time.perf_counter()
    first = True
    async for chunk in engine.stream(text, voice, chunk_ms):
        if first:
            FIRST_AUDIO.labels(engine.name).observe(time.perf_counter() - t0)
            first = False
        yield chunk
    SYNTHESIS.labels(engine.name).observe(time.perf_counter() - t0)
