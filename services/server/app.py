"""Session server (:8000): the public WebSocket, the web client, and nothing model-related.

It talks to STT, chat and TTS over the network only, so each scales and fails on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import httpx
from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.websockets import WebSocketState

from services.server.agents import AgentBook
from services.server.session import Services, Session
from shared.clients import ChatClient, SttClient
from shared.config import ServerSettings
from shared.logs import setup_logging
from shared.protocol import CallReady, ErrorOut, InitMessage, client_message
from shared.service import create_service

log = setup_logging("server")
logging.getLogger("httpx").setLevel(logging.WARNING)
cfg = ServerSettings()
STATIC = Path(__file__).parent / "static"
INIT_TIMEOUT = 10.0

# WebSocket close codes (RFC 6455)
CLOSE_UNSUPPORTED = 1003  # binary before the init message
CLOSE_INVALID = 1007  # init frame is not JSON
CLOSE_POLICY = 1008  # init JSON does not follow the protocol, or none came


class _Deps:
    http: httpx.AsyncClient
    services: Services
    agents: AgentBook


deps = _Deps()


async def _load() -> None:
    deps.agents = AgentBook.load(cfg.agents_file)
    deps.http = httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout, connect=3.0), limits=httpx.Limits(max_keepalive_connections=32))
    deps.services = Services(SttClient(deps.http, cfg.stt_url), ChatClient(deps.http, cfg.chat_url), cfg)


app, state = create_service("server", _load, log, "Real-time speech-to-speech session server.")
app.mount("/static", StaticFiles(directory=STATIC), name="static")


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@app.get("/agents", summary="Agents a client can choose by agentId")
async def agents() -> list[dict]:
    return [a.model_dump(exclude_none=True) for a in deps.agents.agents]


@app.get("/status", summary="Readiness of the services this server depends on")
async def status() -> dict[str, object]:
    async def probe(url: str) -> bool:
        try:
            return (await deps.http.get(url + "/ready", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    tts_http = cfg.tts_url.replace("ws://", "http://").replace("wss://", "https://").split("/tts/")[0]
    names, urls = ("stt", "chat", "tts"), (cfg.stt_url, cfg.chat_url, tts_http)
    results = await asyncio.gather(*(probe(u.rstrip("/")) for u in urls))
    return {"server": True, **dict(zip(names, results, strict=True))}


async def _reject(ws: WebSocket, code: int, message: str) -> None:
    await ws.send_text(ErrorOut(code="bad_init", message=message, recoverable=False).dump())
    await ws.close(code, reason=message[:120])


async def _read_init(ws: WebSocket) -> InitMessage | None:
    try:
        first = await asyncio.wait_for(ws.receive(), INIT_TIMEOUT)
    except TimeoutError:
        await _reject(ws, CLOSE_POLICY, f"no init message within {INIT_TIMEOUT:.0f}s")
        return None
    if first.get("type") == "websocket.disconnect":
        return None
    if first.get("text") is None:
        await _reject(ws, CLOSE_UNSUPPORTED, "the first message must be the JSON init message, not audio")
        return None
    try:
        return InitMessage.model_validate(json.loads(first["text"]))
    except json.JSONDecodeError:
        await _reject(ws, CLOSE_INVALID, "the init message is not valid JSON")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "message"
        await _reject(ws, CLOSE_POLICY, f"invalid init message: {where}: {err['msg']}")
    return None


@app.websocket("/ws/{session_id}")
async def session_ws(ws: WebSocket, session_id: str) -> None:
    await ws.accept()
    if not state.ready:
        await _reject(ws, 1013, "server is starting, try again")
        return
    init = await _read_init(ws)
    if init is None:
        return
    agent = deps.agents.get(init.agentId)
    session = Session(ws, session_id, init, agent, deps.services)
    log.info("session %s: start (agent %s, audio out %s)", session_id, agent.id, init.audioOut)
    await session.send(CallReady(session_id=session_id).dump())
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if (data := msg.get("bytes")) is not None:
                await session.on_audio(data)
                continue
            try:
                parsed = client_message.validate_json(msg.get("text") or "")
            except ValidationError as exc:
                await session.error("bad_message", f"ignored message: {exc.errors()[0]['msg']}")
                continue
            await session.on_text(parsed)
    except (WebSocketDisconnect, RuntimeError):
        pass
    except Exception:
        log.exception("session %s: unexpected error", session_id)
        if ws.client_state == WebSocketState.CONNECTED:
            await session.error("internal", "internal error; the session is closing", recoverable=False)
            await ws.close(1011)
    finally:
        await session.close()
        log.info("session %s: end", session_id)
