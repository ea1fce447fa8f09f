"""A transparent recording proxy between the session server and the chat service.

It speaks the real wire protocol in both directions (requests are forwarded
unchanged, server-sent events streamed back as they come) and keeps the JSON
bodies the session server sent, so tests can check what history the LLM saw.
"""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


class ChatTap:
    def __init__(self, upstream: str, port: int) -> None:
        self.upstream, self.port = upstream.rstrip("/"), port
        self.requests: list[dict] = []
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        if request.method == "POST" and body:
            self.requests.append(await request.json())
        client = httpx.AsyncClient(timeout=120)
        upstream = await client.send(
            client.build_request(request.method, f"{self.upstream}/{request.path_params['path']}", content=body,
                                 headers={"content-type": request.headers.get("content-type", "application/json")}),
            stream=True,
        )

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))

    def start(self) -> ChatTap:
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)



