"""Errors of the gateway, written in each API family's own shape.

Every route of a family uses that family's route class, so bad input (pydantic's
validation), our own checks and upstream failures all leave in one shape, and an
upstream body or exception text is logged, never sent to the user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from shared.clients import UpstreamError
from shared.service import ServiceError

log = logging.getLogger("server.gateway")


class GatewayError(Exception):
    """A client-facing error: HTTP status, message, and (OpenAI) the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        if self.status in (401, 403):
            return "authentication_error"
        if self.status == 429:
            return "rate_limit_error"
        return "invalid_request_error" if self.status < 500 else "server_error"


def from_upstream(exc: UpstreamError) -> GatewayError:
    """The user learns which stage failed and whether to retry, not the upstream's text."""
    log.warning("upstream %s failed: %s %s", exc.service, exc.message, getattr(exc, "detail", ""))
    what = {"stt": "speech recognition", "chat": "the language model", "tts": "speech synthesis"}.get(exc.service, exc.service)
    if exc.retryable:
        return GatewayError(503, f"{what} is unavailable right now; retry later", code="upstream_unavailable")
    if exc.bad_request:  # e.g. longer than the model's context: the request, not the service, is at fault
        return GatewayError(400, f"{what} cannot take this request (too long, or options it does not accept)",
                            code="upstream_rejected")
    return GatewayError(502, f"{what} failed on this input", code="upstream_failed")


def validation_error(exc: RequestValidationError | ValidationError) -> GatewayError:
    err = exc.errors()[0]
    if err.get("type") == "json_invalid":
        return GatewayError(400, "the body is not valid JSON", code="invalid_json")
    param = ""
    for x in err.get("loc", ()):
        if x in ("body", "query", "form"):
            continue
        param += f"[{x}]" if isinstance(x, int) else (f".{x}" if param else str(x))
    msg = str(err.get("msg", "invalid value"))
    return GatewayError(400, f"{param}: {msg}" if param else msg, param=param or None, code="invalid_value")


def to_gateway_error(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestValidationError | ValidationError):
        return validation_error(exc)
    if isinstance(exc, UpstreamError):
        return from_upstream(exc)
    if isinstance(exc, ServiceError):
        return GatewayError(exc.status, exc.message)
    if isinstance(exc, HTTPException):  # e.g. the app-wide auth, when raised inside a route
        return GatewayError(exc.status_code, str(exc.detail))
    log.exception("gateway: unexpected error", exc_info=exc)
    return GatewayError(500, "internal error", code="internal_error")


def openai_body(e: GatewayError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}


def simple_body(e: GatewayError) -> dict[str, Any]:
    """GemmaVoice and Pollinations: {"error": message} plus a machine-readable code."""
    return {"error": e.message, "code": e.code or e.kind, "status": e.status}


def route_class(body: Callable[[GatewayError], dict[str, Any]]) -> type[APIRoute]:
    """An APIRoute whose errors (validation included) come out as `body(...)` JSON."""

    class FamilyRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def wrapped(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - translated at the boundary, logged above
                    e = to_gateway_error(exc)
                    return JSONResponse(body(e), status_code=e.status)

            return wrapped

    return FamilyRoute
