"""HTTP side of telephony: the TwiML webhook a Twilio number calls, and the signature check
that the media stream's WebSocket handshake gets too (Twilio signs both)."""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection

from services.server.telephony.config import TwilioSettings
from services.server.telephony.webhook import VOICE_PATH, connect_stream_twiml, stream_url, valid_signature
from shared.security import TokenError

log = logging.getLogger("server.telephony")
SIGNATURE_HEADER = "X-Twilio-Signature"
AGENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
STREAM_TOKEN_SESSION = "telephony-twilio"  # the session id the stream's tokens are minted for


def _signed_urls(conn: HTTPConnection, settings: TwilioSettings) -> list[str]:
    """The URL Twilio requested, which it signed. Behind a proxy that is the configured public
    one; without it, the request's own, with either scheme (TLS often ends at a proxy)."""
    websocket = conn.scope["type"] == "websocket"
    path_query = conn.url.path + ("?" + conn.url.query if conn.url.query else "")
    if settings.public_url:
        base = settings.public_url
        if websocket:
            base = "ws" + base.removeprefix("http")  # https -> wss, http -> ws
        return [base + path_query]
    host = conn.headers.get("host", "")
    schemes = ("wss", "ws") if websocket else ("https", "http")
    return [f"{scheme}://{host}{path_query}" for scheme in schemes]


def signature_ok(conn: HTTPConnection, settings: TwilioSettings, params: list[tuple[str, str]] | None = None) -> bool:
    """Whether the request carries Twilio's signature, for the webhook (its POST parameters) and
    the stream's handshake (none). Without a configured auth token there is nothing to check:
    True, unless the server's API keys are on and the request presented none (the guard marks
    it `signature_required`): then telephony is closed until SERVER_TWILIO_AUTH_TOKEN is set."""
    state = conn.scope.get("state", {})
    if state.get("key_id") not in (None, "anonymous", "signed"):
        return True  # it presented one of the server's API keys (own bridges, tests)
    tokens = getattr(conn.app.state, "tokens", None)
    if conn.scope["type"] == "websocket" and tokens is not None and (presented := conn.query_params.get("token")):
        try:  # the stream URL our webhook answered carries a single-use session token
            tokens.redeem(presented, STREAM_TOKEN_SESSION)
            return True
        except TokenError as exc:
            log.warning("telephony stream refused: %s", exc)
            return False
    token = settings.auth_token.get_secret_value()
    if not token:
        if state.get("signature_required"):
            log.warning("telephony refused: API keys are on and SERVER_TWILIO_AUTH_TOKEN is not set")
            return False
        return True
    signature = conn.headers.get(SIGNATURE_HEADER)
    return any(valid_signature(token, url, params, signature) for url in _signed_urls(conn, settings))


def make_router(settings: TwilioSettings | None = None) -> APIRouter:
    settings = settings or TwilioSettings()
    router = APIRouter(tags=["telephony"])

    @router.api_route(VOICE_PATH, methods=["POST", "GET"], response_class=Response,
                      summary="TwiML for a Twilio number: connect the call to our media stream")
    async def twilio_voice(request: Request) -> Response:
        params: list[tuple[str, str]] = []
        if request.method == "POST":
            form = await request.form()
            params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        if not signature_ok(request, settings, params):
            log.warning("twilio webhook refused: bad or missing %s", SIGNATURE_HEADER)
            return JSONResponse({"error": f"invalid {SIGNATURE_HEADER}: this endpoint answers Twilio only", "retryable": False},
                                status_code=403)
        try:
            url = stream_url(settings.public_url, request.headers.get("host"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc), "retryable": False}, status_code=400)
        keys, tokens = getattr(request.app.state, "keys", None), getattr(request.app.state, "tokens", None)
        if keys is not None and keys.enabled and tokens is not None:  # credentials on: this token lets the stream in
            token, _ = tokens.mint(STREAM_TOKEN_SESSION, "twilio")
            url += f"?token={token}"
        # ?agent=ID on the number's webhook URL picks the agent; it reaches the stream as a <Parameter>
        agent = request.query_params.get("agent")
        parameters = {"agentId": agent} if agent and AGENT_ID.match(agent) else {}
        return Response(connect_stream_twiml(url, parameters), media_type="application/xml")

    return router
