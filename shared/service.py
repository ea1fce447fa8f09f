"""What every FastAPI service has: /health, /ready, /metrics, the security guard,
model loading off the event loop, a drain on SIGTERM, and errors translated into
clear JSON (`{"error", "retryable"}`) instead of a bare 500."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from shared.metrics import HTTP_REQUESTS, HTTP_SECONDS, INFLIGHT
from shared.security import BodyTooLarge, Guard, GuardConfig, api_keys, credentials_from_env


class ServiceError(Exception):
    """An error with an HTTP status and a retryable flag, raised by engines and handlers.

    `message` is for the client: short, no upstream bodies or exception text (log those)."""

    def __init__(self, status: int, message: str, retryable: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.retryable, self.extra = status, message, retryable, extra


class MissingDependency(ServiceError):
    def __init__(self, package: str, feature: str) -> None:
        super().__init__(503, f"{feature} needs the '{package}' package: pip install -r requirements-gpu.txt (or pip install {package})")


class Readiness:
    """Tracks model loading so /ready answers 503 (with the reason) until it is done,
    and again from the moment a drain starts."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.error: str | None = None
        self.load_seconds: float | None = None


def create_service(
    name: str,
    load: Callable[[], Awaitable[Any]],
    log: logging.Logger,
    description: str = "",
    *,
    max_body_mb: float = 1.0,
    origins: list[str] | None = None,
    token_paths: str | None = None,
    signed_paths: str | None = None,
    on_drain: Callable[[], Awaitable[None]] | None = None,
    ws_max_size: int = 2**24,
) -> tuple[FastAPI, Readiness]:
    """A FastAPI app whose `load` coroutine runs in the background at start-up.

    `on_drain` runs when the process is told to stop (see shared/serve.py), after /ready
    has turned 503: it lets work in flight finish before the server closes connections."""
    state = Readiness()

    async def _load() -> None:
        t0 = time.perf_counter()
        try:
            await load()
        except Exception as exc:
            state.error = f"failed to load ({type(exc).__name__}; see the service's log)"  # the text may name paths
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
    app.state.ws_max_size = ws_max_size

    async def drain() -> None:
        state.draining = True
        log.info("draining: /ready answers 503, new work is refused")
        if on_drain is not None:
            await on_drain()

    app.state.drain = drain

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/ready", tags=["ops"])
    async def ready() -> JSONResponse:
        if state.ready and not state.draining:
            return JSONResponse({"ready": True, "load_seconds": state.load_seconds})
        reason = "draining" if state.draining else state.error or "loading"
        return JSONResponse({"ready": False, "error": reason}, status_code=503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "retryable": False}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first["loc"] if x != "body") or "request"
        body = {"error": f"{where}: {first['msg']}", "retryable": False, "detail": _jsonable(errors)}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": "internal error", "retryable": True}, status_code=500)

    keys, tokens = credentials_from_env()
    app.state.keys, app.state.tokens = keys, tokens  # the server mints tokens with the guard's signer
    app.add_middleware(Guard, config=GuardConfig(name, int(max_body_mb * 1e6), origins, token_paths, signed_paths), keys=keys, tokens=tokens)
    app.add_middleware(_Measured, service=name)
    return app, state


def error_response(exc: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else None
    return JSONResponse({"error": exc.message, "retryable": exc.retryable, **exc.extra}, status_code=exc.status, headers=headers)


def _jsonable(errors: Any) -> Any:
    return [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]


def require_ready(state: Readiness) -> None:
    if state.draining:
        raise ServiceError(503, "shutting down, try another replica", retryable=True)
    if not state.ready:
        raise ServiceError(503, f"model not ready: {state.error or 'loading'}", retryable=state.error is None)


class _Measured:
    """Counts every HTTP request by route template and status; times it to its first byte."""

    def __init__(self, app: Any, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 0
        inflight = INFLIGHT.labels(service=self.service)

        async def measured_send(msg: MutableMapping[str, Any]) -> None:
            nonlocal status
            if msg["type"] in ("http.response.start", "websocket.http.response.start"):
                status = msg["status"]
                HTTP_SECONDS.labels(service=self.service, route=_route(scope)).observe(time.perf_counter() - t0)
            elif msg["type"] == "websocket.accept":
                status = 101
            await send(msg)

        inflight.inc()
        try:
            await self.app(scope, receive, measured_send)
        except BodyTooLarge as exc:
            if status:
                raise
            await JSONResponse({"error": str(exc), "retryable": False}, 413)(scope, receive, measured_send)
        finally:
            inflight.dec()
            HTTP_REQUESTS.labels(service=self.service, route=_route(scope), status=str(status or 500)).inc()


def _route(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def open_access_note(service: str, host: str) -> str | None:
    """What to say at start-up about credentials; None when keys are configured."""
    if api_keys():
        return None
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"{service}: no API_KEYS set: open access, listening on {host} only"
    return (f"{service}: WARNING: no API_KEYS set and listening on {host}: ANYONE who can reach this port can use it. "
            "Set API_KEYS before putting it on a network.")
