"""Prometheus metrics of the STT service (exported by /metrics, which create_service adds)."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

INFERENCE_SECONDS = Histogram(
    "s2s_stt_inference_seconds", "One model call in the STT worker: 'batch' (POST /transcribe), 'partial' or 'final' (stream)",
    ["kind"], buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
PASS_REALTIME_FACTOR = Histogram(
    "s2s_stt_pass_realtime_factor", "A partial pass's wall time (queue included) over the new audio it covered",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
)
ACTIVE_STREAMS = Gauge("s2s_stt_active_streams", "Open /transcribe/stream connections")
QUEUE_DEPTH = Gauge("s2s_stt_queue_depth", "Model calls waiting for the STT worker")
