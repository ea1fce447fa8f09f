"""Run one service under uvicorn with a drain on SIGTERM:  python -m shared.serve <stt|chat|tts|server>

uvicorn alone closes every WebSocket at once (1012) when told to stop. Here the first
SIGTERM/SIGINT starts the app's drain instead (/ready turns 503 at once, new work is
refused, turns in flight finish within DRAIN_TIMEOUT), and only then does uvicorn shut
down, waiting for the requests still open. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from types import FrameType

import uvicorn

from shared.config import common
from shared.service import open_access_note

log = logging.getLogger("serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: object) -> None:
        super().__init__(config)
        self._drain = drain
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._drain is None:
            return super().handle_exit(sig, frame)
        self._draining = True
        loop = asyncio.get_running_loop()  # the handler runs on the loop's own thread, between callbacks
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        timeout = common().drain_timeout
        try:
            await asyncio.wait_for(self._drain(), timeout + 2)  # type: ignore[operator]
        except TimeoutError:
            log.warning("drain did not finish in %.0fs; stopping anyway", timeout + 2)
        except Exception:
            log.exception("drain failed; stopping anyway")
        self.should_exit = True


class _DenialNoise(logging.Filter):
    """uvicorn's websockets-sansio protocol logs this ERROR after every pre-accept refusal
    (an HTTP 401/403 answered through the ASGI denial-response extension), although the
    refusal was sent as intended; it is not an error here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def main(name: str) -> None:
    logging.getLogger("uvicorn.error").addFilter(_DenialNoise())
    module = importlib.import_module(f"services.{name}.app")
    app, cfg = module.app, module.cfg
    if (note := open_access_note(name, cfg.host)) is not None:
        (log.warning if "WARNING" in note else log.info)(note)
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
        ws_max_size=app.state.ws_max_size, timeout_graceful_shutdown=int(common().drain_timeout) + 1,
    )
    DrainingServer(config, getattr(app.state, "drain", None)).run()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("stt", "chat", "tts", "server"):
        sys.exit("usage: python -m shared.serve <stt|chat|tts|server>")
    main(sys.argv[1])
