"""Prometheus metrics shared by the services (each service is its own process and registry).

Service-specific model metrics live beside their engines; what every service or the
session server records is defined here, once.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets (seconds) for the sub-second stages of a turn.
FAST = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

HTTP_REQUESTS = Counter("s2s_http_requests_total", "HTTP requests answered", ["service", "route", "status"])
HTTP_SECONDS = Histogram("s2s_http_request_seconds", "time to answer an HTTP request (to the first byte of streams)",
                         ["service", "route"], buckets=FAST)
REJECTED = Counter("s2s_rejected_total", "requests and connections refused", ["service", "reason"])
INFLIGHT = Gauge("s2s_inflight_requests", "HTTP requests and WebSockets being served", ["service"])

# Session server
ACTIVE_SESSIONS = Gauge("s2s_server_active_sessions", "open sessions on /ws")
QUEUED_SESSIONS = Gauge("s2s_server_queued_sessions", "sessions waiting for a place on /ws")
TURNS = Counter("s2s_server_turns_total", "turns, by how they ended", ["outcome"])
INTERRUPTIONS = Counter("s2s_server_interruptions_total", "answers cut by the user speaking (barge-in)")
PAUSES = Counter("s2s_server_paused_replies_total", "answers paused for speech over them (then cut, or resumed)")
RESUMES = Counter("s2s_server_resumed_replies_total", "answers paused for speech over them that went on (not the user's words)")
SESSION_ERRORS = Counter("s2s_server_errors_total", "error messages sent to clients, by code", ["code"])
TURN_STAGE = Histogram("s2s_server_turn_stage_seconds", "time from the end of the user's speech to each stage of a turn",
                       ["stage"], buckets=FAST)
