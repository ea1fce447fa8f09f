"""Prometheus metrics of the chat service (exported by /metrics, which create_service adds)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)

TIME_TO_FIRST_TOKEN = Histogram(
    "s2s_chat_time_to_first_token_seconds", "From request to its first generated token", buckets=_FAST
)
TOKENS_GENERATED = Counter("s2s_chat_tokens_generated_total", "Tokens sampled for replies")
PROMPT_TOKENS = Counter(
    "s2s_chat_prompt_tokens_total", "Prompt tokens: 'cached' reused from a slot's KV cache, 'decoded' prefilled", ["kind"]
)
ACTIVE_SEQUENCES = Gauge("s2s_chat_active_sequences", "Requests holding a slot (prefilling or generating)")
DECODE_THREADS = Gauge("s2s_chat_decode_threads", "Threads of the last llama.cpp decode (fewer while other work holds the cores)")
QUEUE_DEPTH = Gauge("s2s_chat_queue_depth", "Requests waiting for a free slot")
STEP_SECONDS = Histogram(
    "s2s_chat_step_seconds", "One llama_decode of a batch: 'prefill' if it holds prompt tokens, else 'decode'",
    ["kind"], buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0),
)
