"""Logging set-up shared by every service: one line per event, optional JSON."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

from shared.config import common

# Set by the session server around a session and a turn; asyncio tasks inherit them,
# so every line logged on behalf of a session says which one (and which turn).
SESSION_LOG: contextvars.ContextVar[str | None] = contextvars.ContextVar("session", default=None)
TURN_LOG: contextvars.ContextVar[int | None] = contextvars.ContextVar("turn", default=None)


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        session, turn = SESSION_LOG.get(), TURN_LOG.get()
        record.session, record.turn = session, turn
        record.ids = (f"session={session} " if session else "") + (f"turn={turn} " if turn else "")
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"t": self.formatTime(record), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key in ("session", "turn"):
            if getattr(record, key, None) is not None:
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(service: str) -> logging.Logger:
    cfg = common()
    handler = logging.StreamHandler(sys.stdout)
    fmt = _JsonFormatter() if cfg.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(ids)s%(message)s")
    handler.setFormatter(fmt)
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    return logging.getLogger(service)


def user_text(text: str) -> str:
    """What a log line may show of user speech or replies: the text only if enabled."""
    return repr(text) if common().log_user_text else f"<{len(text)} chars>"
