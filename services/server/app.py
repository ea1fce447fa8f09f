"""Session server (:8000): the public WebSocket, the web client, and nothing model-related.

It talks to STT, chat and TTS over the network only, so each scales and fails on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from pathlib import Path

import httpx
from fastapi import Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocketState

from services.server.admission import Admission, Full
from services.server.agents import AgentBook
from services.server.gateway import routers as gateway_routers
from services.server.session import Session, WebSocketChannel
from services.server.session.resume import Parking, ReplayLog, ResumeRefused
from services.server.telephony import TwilioChannel, TwilioSettings, make_router, serve_media_stream, signature_ok
from services.server.telephony.screening import Screening
from services.server.telephony.twilio import CallRefused, Start
from services.server.telephony.webhook import STREAM_PATH
from services.server.tools import registry as tool_registry
from services.server.upstreams import Upstreams
from shared.clients import UpstreamError
from shared.config import ServerSettings, common
from shared.logs import SESSION_LOG, setup_logging
from shared.metrics import SESSION_ERRORS
from shared.protocol import CallReady, ErrorOut, InitMessage, Queued, client_message, first_error
from shared.service import create_service

log = setup_logging("server")
logging.getLogger("httpx").setLevel(logging.WARNING)
cfg = ServerSettings()
STATIC = Path(__file__).parent / "static"
INIT_TIMEOUT = 10.0
SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# WebSocket close codes (RFC 6455)
CLOSE_NORMAL = 1000  # session expired (duration or idle limit)
CLOSE_UNSUPPORTED = 1003  # binary before the init message
CLOSE_INVALID = 1007  # init frame is not JSON
CLOSE_POLICY = 1008  # init JSON does not follow the protocol, or none came
CLOSE_TOO_BIG = 1009  # a frame or message over its limit
CLOSE_TRY_LATER = 1013  # full, starting or draining


class _Deps:
    agents: AgentBook
    upstreams: Upstreams


deps = _Deps()
admission = Admission(cfg.max_sessions, cfg.max_sessions_per_key, cfg.max_queued, cfg.queue_timeout)


async def _load() -> None:
    tool_registry.load(cfg.tool_modules)
    deps.agents = AgentBook.load(cfg.agents_file)
    deps.upstreams = app.state.upstreams = Upstreams.build(cfg)  # the gateway's routes reach it through a dependency


async def _drain() -> None:
    await admission.drain(common().drain_timeout)


app, state = create_service(
    "server", _load, log, "Real-time speech-to-speech session server.",
    max_body_mb=cfg.max_body_mb, origins=[o.strip() for o in cfg.allowed_origins.split(",") if o.strip()],
    token_paths="/ws/", signed_paths="/telephony/", on_drain=_drain, ws_max_size=cfg.max_frame_bytes,
)
app.mount("/static", StaticFiles(directory=STATIC), name="static")
twilio_cfg = TwilioSettings()
app.include_router(make_router(twilio_cfg))
for _router in gateway_routers:  # before /ws/{session_id}, which would otherwise take /ws/stt and /ws/tts
    app.include_router(_router)


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@app.get("/agents", summary="Agents a client can choose by agentId")
async def agents() -> list[dict]:
    return [a.model_dump(exclude_none=True) for a in deps.agents.agents]


class TokenRequest(BaseModel):
    session_id: str | None = Field(None, pattern=SESSION_ID.pattern, description="default: a new random id")


class TokenOut(BaseModel):
    token: str
    session_id: str
    expires_at: float = Field(description="Unix time; the token is single-use")
    ws_path: str


@app.post("/v1/session-tokens", summary="A short-lived, single-use token for one browser session (?token= on /ws/{id})")
async def session_token(request: Request, body: TokenRequest | None = None) -> TokenOut:
    sid = (body.session_id if body else None) or uuid.uuid4().hex
    token, exp = app.state.tokens.mint(sid, request.scope.get("state", {}).get("key_id", "anonymous"))
    return TokenOut(token=token, session_id=sid, expires_at=round(exp, 3), ws_path=f"/ws/{sid}?token={token}")


@app.get("/voices", summary="The TTS service's voice catalog (choose a voice by its id)")
async def voices() -> JSONResponse:
    try:
        return JSONResponse(await deps.upstreams.voices.get())
    except UpstreamError as exc:
        log.warning("voice catalog: %s", exc)
        return JSONResponse({"error": exc.message, "retryable": True}, 503 if exc.status is None else 502)


@app.get("/status", summary="Readiness of the services this server depends on")
async def status() -> dict[str, object]:
    async def probe(url: str) -> bool:
        try:
            return (await deps.upstreams.http.get(url + "/ready", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    pools = deps.upstreams.pools()
    names = list(pools)
    results = await asyncio.gather(*(probe(pools[n].pick().http_base) for n in names))
    out: dict[str, object] = {"server": True, **dict(zip(names, results, strict=True))}
    if any(len(p.replicas) > 1 for p in pools.values()):
        out["replicas"] = {n: p.status() for n, p in pools.items()}
    return out


async def _reject(ws: WebSocket, code: int, message: str, error: str = "bad_init") -> None:
    SESSION_ERRORS.labels(code=error).inc()
    await ws.send_text(ErrorOut(code=error, message=message, recoverable=False).dump())
    await ws.close(code, reason=message[:120])


async def _read_init(ws: WebSocket) -> InitMessage | None:
    try:
        first = await asyncio.wait_for(ws.receive(), INIT_TIMEOUT)
    except TimeoutError:
        await _reject(ws, CLOSE_POLICY, f"no init message within {INIT_TIMEOUT:.0f}s")
        return None
    if first.get("type") == "websocket.disconnect":
        return None
    text = first.get("text")
    if text is None:
        await _reject(ws, CLOSE_UNSUPPORTED, "the first message must be the JSON init message, not audio")
        return None
    if len(text) > cfg.max_init_bytes:
        await _reject(ws, CLOSE_TOO_BIG, f"the init message is larger than {cfg.max_init_bytes} bytes")
        return None
    try:
        return InitMessage.model_validate(json.loads(text))
    except json.JSONDecodeError:
        await _reject(ws, CLOSE_INVALID, "the init message is not valid JSON")
    except ValidationError as exc:
        await _reject(ws, CLOSE_POLICY, f"invalid init message: {first_error(exc)}")
    return None


@app.websocket("/ws/{session_id}")
async def session_ws(ws: WebSocket, session_id: str) -> None:
    if not SESSION_ID.match(session_id):  # refused before accept, like credentials
        await ws.send_denial_response(JSONResponse({"error": "session ids are 1-128 of A-Z a-z 0-9 _ . : -"}, 400))
        return
    await ws.accept()
    if not state.ready:
        await _reject(ws, CLOSE_TRY_LATER, "server is starting, try again", "not_ready")
        return
    init = await _read_init(ws)
    if init is None:
        return
    key_id = ws.scope.get("state", {}).get("key_id", "anonymous")
    if init.resume is not None:
        try:
            session = parking.claim(init.resume.token, session_id, key_id)
        except ResumeRefused as exc:
            await _reject(ws, CLOSE_POLICY, exc.message, "resume_refused")
            return
        await _connected(ws, session, key_id, init.resume.received)
        return
    if init.voice and not await deps.upstreams.voices.known(init.voice):
        await _reject(ws, CLOSE_POLICY, f"unknown voice id {init.voice!r}; GET /voices lists them")
        return
    agent = deps.agents.get(init.agentId)
    channel = WebSocketChannel(ws, binary_audio=init.audioOut == "binary", replay=ReplayLog() if parking.enabled else None)
    session = Session(channel, session_id, init, agent, deps.upstreams, resumable=parking.enabled)
    if not await _take_place(ws, session, key_id):
        admission.release(session)  # in case a place came just as the client left
        return
    await _connected(ws, session, key_id, None)


async def _connected(ws: WebSocket, session: Session, key_id: str, received: int | None) -> None:
    """Serve a session on this socket: a new one (`received` None), or one resumed after a drop."""
    token = SESSION_LOG.set(session.id)
    channel = session.outbox.channel
    assert isinstance(channel, WebSocketChannel)
    resume = parking.issue(session, key_id) if parking.enabled else None
    ready = CallReady(session_id=session.id, resume_token=resume, resume_window_s=parking.window if resume else None,
                      resumed=received is not None)
    session.connection += 1
    dropped, mine = False, session.connection
    try:
        if received is None:
            log.info("start (agent %s, audio out %s)", session.agent.id, "binary" if channel.binary_audio else "json")
            await session.start()
            await channel.greet(ready)
        else:
            old = channel.ws
            if not session.detached:  # the old socket has not noticed the drop yet: this one takes over
                session.detach()
                asyncio.create_task(old.close(4000, reason="resumed on a newer connection"))
            if missing := await channel.rebind(ws, ready, received):
                await session.error("resume_gap", f"{missing} earlier messages were no longer kept and are missing")
            log.info("resumed (%d frames received)", received)
        session.attach()
        dropped = await _serve(ws, session)
    except (WebSocketDisconnect, RuntimeError):
        dropped = True
    except Exception:
        log.exception("unexpected error")
        if ws.client_state == WebSocketState.CONNECTED:
            await session.error("internal", "internal error; the session is closing", recoverable=False)
            await ws.close(1011)
    finally:
        if session.connection != mine:
            pass  # a newer connection of this session took over
        elif dropped and resume is not None and not session.closed and not admission.draining:
            session.detach()
            parking.park(resume)
        else:
            if resume is not None:
                parking.forget(resume)
            admission.release(session)
            await session.close()
            log.info("end")
        SESSION_LOG.reset(token)


async def _expired(session: Session) -> None:
    admission.release(session)
    await session.close()


parking = Parking(cfg.resume_window, _expired)


@app.websocket(STREAM_PATH)
async def twilio_media_stream(ws: WebSocket) -> None:
    """A phone call (Twilio Media Streams), through the same session pipeline as /ws."""
    if not signature_ok(ws, twilio_cfg):  # refused before accept, like credentials
        await ws.send_denial_response(JSONResponse({"error": "invalid X-Twilio-Signature: this endpoint answers Twilio only"}, 403))
        return
    await ws.accept()
    if not state.ready:
        await ws.close(CLOSE_TRY_LATER, reason="server is starting, try again")
        return
    key_id = ws.scope.get("state", {}).get("key_id", "anonymous")
    sessions: list[Session] = []
    screenings: list[Screening] = []

    async def open_session(channel: TwilioChannel, start: Start) -> Session:
        info = start.start
        init = InitMessage(agentId=info.customParameters.get("agentId") or "assistant", userId=info.callSid[:128])
        session = Session(channel, f"twilio-{info.callSid}"[:128], init, deps.agents.get(init.agentId), deps.upstreams)
        try:
            admitted = admission.admit(session, key_id)
        except Full as exc:
            raise CallRefused(CLOSE_TRY_LATER, exc.message) from exc
        if not admitted:  # a caller cannot wait in a silent queue: full is full
            raise CallRefused(CLOSE_TRY_LATER, "the server is at its session limit")
        sessions.append(session)
        SESSION_LOG.set(session.id)  # this task serves the call alone: its log lines name the session
        if session.agent.voicemail is not None:  # who answered: a person, or a voicemail greeting?
            voice = init.voice or session.agent.voice
            screening = Screening(session.agent.voicemail, channel, lambda why: session.close(CLOSE_NORMAL, why),
                                  lambda text: deps.upstreams.speak_audio(text, voice))
            channel.observers.append(screening.observe)
            screenings.append(screening)
        await session.start()
        log.info("call %s: session %s (agent %s)", info.callSid, session.id, session.agent.id)
        return session

    try:
        async with asyncio.timeout(cfg.session_max_duration):
            await serve_media_stream(ws, open_session)
    except TimeoutError:
        if ws.client_state == WebSocketState.CONNECTED:
            await ws.close(CLOSE_NORMAL, reason="the call reached the session's maximum duration")
    finally:
        for screening in screenings:
            await screening.close()
        for session in sessions:
            admission.release(session)


async def _take_place(ws: WebSocket, session: Session, key_id: str) -> bool:
    """Admitted now, or after waiting in the queue (told its place); False: refused, or the client left."""
    try:
        if admission.admit(session, key_id):
            return True  # the common case: nothing of the client's audio has been read meanwhile
    except Full as exc:
        await _reject(ws, CLOSE_TRY_LATER, exc.message, exc.reason)
        return False

    async def tell(place: int, wait: float) -> None:
        await ws.send_text(Queued(position=place, estimated_wait_s=wait).dump())

    async def until_gone() -> None:  # frames sent while queued are dropped; a disconnect ends the wait
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass

    entering, gone = asyncio.create_task(admission.wait(session, key_id, tell)), asyncio.create_task(until_gone())
    done, _ = await asyncio.wait({entering, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (entering, gone):
        task.cancel()
    await asyncio.gather(entering, gone, return_exceptions=True)  # nothing else may read the socket meanwhile
    if gone in done or entering.cancelled():
        return False
    if isinstance(failed := entering.exception(), Full):
        await _reject(ws, CLOSE_TRY_LATER, failed.message, failed.reason)
        return False
    return failed is None  # else telling its place failed: the client is gone


async def _serve(ws: WebSocket, session: Session) -> bool:
    """The session's input loop, with its idle and duration limits. True: the connection
    dropped (no close frame from the client: it may resume); False: the session ended."""
    deadline = session.started + cfg.session_max_duration
    while True:
        left = deadline - time.monotonic()
        try:
            msg = await asyncio.wait_for(ws.receive(), min(cfg.session_idle_timeout, max(left, 0.0)))
        except TimeoutError:
            why = "the session reached its maximum duration" if left <= cfg.session_idle_timeout else "no audio or message for too long"
            await session.expire(f"{why}; connect again to go on")
            return False
        if msg["type"] == "websocket.disconnect":
            # 1005/1006, no close code: the network dropped (the client may resume); else a hang-up, or our own close
            return msg.get("code", 1006) in (1005, 1006)
        if (data := msg.get("bytes")) is not None:
            await session.on_audio(data)
            continue
        text = msg.get("text") or ""
        if len(text) > cfg.max_init_bytes:
            await session.error("bad_message", f"ignored a message larger than {cfg.max_init_bytes} bytes")
            continue
        try:
            parsed = client_message.validate_json(text)
        except ValidationError as exc:
            await session.error("bad_message", f"ignored message: {first_error(exc)}")
            continue
        await session.on_text(parsed)
