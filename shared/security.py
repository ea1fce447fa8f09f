"""Credentials, Origins, rate and body limits: one guard in front of every service.

With a non-empty `API_KEYS` (comma-separated, shared by all services) every HTTP and
WebSocket route needs a key (`Authorization: Bearer <key>` or `X-API-Key: <key>`), except
the probes (/health, /ready), the API docs and the web client's static page. Browsers,
which cannot set headers on a WebSocket, trade a key for a short-lived, single-use,
HMAC-signed token bound to one session id (`POST /v1/session-tokens`) and connect with
`?token=`. Every refusal happens before a WebSocket is accepted, as an HTTP answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from shared.config import common
from shared.metrics import REJECTED

log = logging.getLogger("security")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
ANONYMOUS = "anonymous"


def key_id(key: str) -> str:
    """A name for a key that is safe to log and to use as a metrics label."""
    return "k_" + hashlib.sha256(key.encode()).hexdigest()[:10]


def api_keys() -> list[str]:
    return [k.strip() for k in common().api_keys.get_secret_value().split(",") if k.strip()]


def service_headers() -> dict[str, str]:
    """What our own services send each other: the first configured key, if any."""
    keys = api_keys()
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def presented_key(headers: Headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


class KeyRing:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), key_id(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, presented: str) -> str | None:
        """The key's id, comparing in constant time against every key."""
        found = None
        for key, kid in self._keys:
            if hmac.compare_digest(key, presented.encode()):
                found = kid
        return found


class TokenError(Exception):
    pass


class SessionTokens:
    """Single-use tokens bound to a session id: `<payload>.<HMAC-SHA256 of payload>`.

    Redeemed nonces are remembered until the token would have expired anyway, so
    memory is bounded by the mint rate times the lifetime (and capped)."""

    def __init__(self, secret: bytes, ttl: float, max_remembered: int = 100_000) -> None:
        self.secret, self.ttl, self.max_remembered = secret, ttl, max_remembered
        self._used: OrderedDict[str, float] = OrderedDict()

    def mint(self, session_id: str, kid: str) -> tuple[str, float]:
        exp = time.time() + self.ttl
        body = json.dumps({"sid": session_id, "kid": kid, "exp": round(exp, 3), "n": secrets.token_urlsafe(12)}, separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}", exp

    def redeem(self, token: str, session_id: str) -> str:
        """The key id the token was minted for; TokenError with the reason otherwise."""
        payload, _, sig = token.partition(".")
        if not payload or not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            raise TokenError("invalid token")
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            sid, kid, exp, nonce = str(claims["sid"]), str(claims["kid"]), float(claims["exp"]), str(claims["n"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("invalid token") from exc
        now = time.time()
        if exp < now:
            raise TokenError("token expired")
        if sid != session_id:
            raise TokenError("token is for another session")
        while self._used and (next(iter(self._used.values())) < now or len(self._used) >= self.max_remembered):
            self._used.popitem(last=False)
        if nonce in self._used:
            raise TokenError("token already used")
        self._used[nonce] = exp
        return kid

    def _sign(self, payload: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()).decode().rstrip("=")


class RateLimiter:
    """A token bucket per key: `per_minute` requests, bursts up to a sixth of that."""

    def __init__(self, per_minute: int, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute / 6)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, kid: str) -> float | None:
        """None if allowed; else seconds until the next request would be."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        level, last = self._buckets.pop(kid, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        allowed = level >= 1.0
        self._buckets[kid] = (level - 1.0 if allowed else level, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - level) / self.rate


def origin_allowed(headers: Headers, extra: list[str]) -> bool:
    """Browsers send Origin; other clients need not. Allowed: none sent, the server's own
    origin (same host and port as the request), localhost, or one listed in `extra`."""
    origin = headers.get("origin")
    if origin is None or "*" in extra:
        return True
    if origin.rstrip("/") in (o.rstrip("/") for o in extra):
        return True
    parts = urlsplit(origin)
    if parts.hostname in ("localhost", "127.0.0.1", "::1"):
        return True
    return parts.netloc != "" and parts.netloc == headers.get("host", "")


@dataclass
class GuardConfig:
    service: str
    max_body_bytes: int
    origins: list[str] | None = None  # None: no Origin check (services other than the gateway)
    token_paths: str | None = None  # WebSocket path prefix where `?token=` is accepted, e.g. "/ws/"
    # path prefix whose requests a provider signs (Twilio): without a key they reach the route,
    # marked `signature_required`, and the route checks the provider's signature itself
    signed_paths: str | None = None


class Guard:
    """Pure ASGI middleware: credentials, Origin, per-key rate limit and body size, checked
    before the app sees the request (so a WebSocket is refused before it is accepted)."""

    def __init__(self, app: ASGIApp, config: GuardConfig, keys: KeyRing, tokens: SessionTokens) -> None:
        self.app, self.cfg, self.keys, self.tokens = app, config, keys, tokens
        self.limiter = RateLimiter(common().rate_limit_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind, path = scope["type"], scope.get("path", "")
        if kind not in ("http", "websocket") or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if kind == "websocket" and self.cfg.origins is not None and not origin_allowed(headers, self.cfg.origins):
            return await self._deny(scope, receive, send, 403, "origin", "this Origin is not allowed to open a session")
        kid = ANONYMOUS
        state = scope.setdefault("state", {})
        if self.keys.enabled and self.cfg.signed_paths and path.startswith(self.cfg.signed_paths) \
                and presented_key(headers) is None:
            kid, state["signature_required"] = "signed", True  # the route checks the provider's signature
        elif self.keys.enabled:
            found = self._authenticate(scope, headers, path)
            if isinstance(found, tuple):
                return await self._deny(scope, receive, send, *found)
            kid = found
            if (wait := self.limiter.check(kid)) is not None:
                return await self._deny(scope, receive, send, 429, "rate_limited", "too many requests for this key",
                                        {"Retry-After": str(max(1, round(wait + 0.5)))})
        state["key_id"] = kid
        if kind == "http":
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.cfg.max_body_bytes):
                return await self._deny(scope, receive, send, 413, "body_too_large", self._too_large())
            receive = self._bounded(receive)
        await self.app(scope, receive, send)

    def _authenticate(self, scope: Scope, headers: Headers, path: str) -> str | tuple[int, str, str]:
        presented = presented_key(headers)
        if presented is not None:
            kid = self.keys.identify(presented)
            return kid if kid is not None else (403, "bad_key", "invalid API key")
        token = parse_qs(scope.get("query_string", b"").decode(errors="replace")).get("token", [None])[0]
        if token and scope["type"] == "websocket" and self.cfg.token_paths and path.startswith(self.cfg.token_paths):
            try:
                return self.tokens.redeem(token, path[len(self.cfg.token_paths):])
            except TokenError as exc:
                return 403, "bad_token", str(exc)
        return 401, "no_credentials", "an API key is required (Authorization: Bearer <key> or X-API-Key)"

    def _too_large(self) -> str:
        return f"request body larger than {self.cfg.max_body_bytes / 1e6:g} MB"

    def _bounded(self, receive: Receive) -> Receive:
        """Count body bytes as they arrive (chunked uploads send no Content-Length)."""
        seen = 0

        async def wrapped() -> MutableMapping[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.cfg.max_body_bytes:
                    raise BodyTooLarge(self._too_large())
            return msg

        return wrapped

    async def _deny(self, scope: Scope, receive: Receive, send: Send, status: int, reason: str, message: str,
                    headers: dict[str, str] | None = None) -> None:
        REJECTED.labels(service=self.cfg.service, reason=reason).inc()
        log.info("refused %s %s: %s (%d)", scope["type"], scope.get("path"), reason, status)
        response = JSONResponse({"error": message, "code": reason, "retryable": status == 429}, status, headers=headers)
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})  # the server answers 403
            return
        await response(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from the receive channel while a handler reads the body: answered 413."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


def credentials_from_env() -> tuple[KeyRing, SessionTokens]:
    """The keys of API_KEYS and the token signer (TOKEN_SECRET, or a secret derived from the keys)."""
    settings = common()
    keys = api_keys()
    secret = settings.token_secret.get_secret_value().encode() or hashlib.sha256(("s2s-token:" + ",".join(keys)).encode()).digest()
    return KeyRing(keys), SessionTokens(secret, settings.token_ttl)
