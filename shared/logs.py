"""Logging set-up shared by every service: one line per event, optional JSON."""

from __future__ import annotations

import json
import logging
import sys

from shared.config import common


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"t": self.formatTime(record), "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(service: str) -> logging.Logger:
    cfg = common()
    handler = logging.StreamHandler(sys.stdout)
    fmt = _JsonFormatter() if cfg.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    return logging.getLogger(service)


def user_text(text: str) -> str:
    """What a log line may show of user speech or replies: the text only if enabled."""
    return repr(text) if common().log_user_text else f"<{len(text)} chars>"
