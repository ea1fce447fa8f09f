"""What every FastAPI service has: /health, /ready, model loading off the event loop,
and errors translated into clear JSON instead of a bare 500."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    """An error with an HTTP status and a retryable flag, raised by engines and handlers."""

    def __init__(self, status: int, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.retryable = status, message, retryable


class MissingDependency(ServiceError):
    def __init__(self, package: str, feature: str) -> None:
        super().__init__(503, f"{feature} needs the '{package}' package: pip install -r requirements-gpu.txt (or pip install {package})")


class Readiness:
    """Tracks model loading so /ready answers 503 (with the reason) until it is done."""

    def __init__(self) -> None:
        self.ready = False
        self.error: str | None = None
        self.load_seconds: float | None = None


def create_service(
    name: str,
    load: Callable[[], Awaitable[Any]],
    log: logging.Logger,
    description: str = "",
) -> tuple[FastAPI, Readiness]:
    """A FastAPI app whose `load` coroutine runs in the background at start-up."""
    state = Readiness()

    async def _load() -> None:
        t0 = time.perf_counter()
        try:
            await load()
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed to load", name)
            return
        state.load_seconds = time.perf_counter() - t0
        state.ready = True
        log.info("%s ready in %.1fs", name, state.load_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(_load())
        yield
        task.cancel()

    app = FastAPI(title=name, description=description, lifespan=lifespan)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"ready": True, "load_seconds": state.load_seconds})
        return JSONResponse({"ready": False, "error": state.error or "loading"}, status_code=503)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "retryable": exc.retryable}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "retryable": True}, status_code=500)

    return app, state


def require_ready(state: Readiness) -> None:
    if not state.ready:
        raise ServiceError(503, f"model not ready: {state.error or 'loading'}", retryable=state.error is None)
