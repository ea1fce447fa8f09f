"""Tools an agent can call while it answers: on the server, or on the client.

An agent lists its tools in the OpenAI function format (agents.json). A tool whose
name is registered here runs on the server: a Python callable with a timeout. Any
other goes to the client as a `tool_call` message and comes back as `tool_result`.
Tools run only once the turn is confirmed (a speculative answer must not act: the user
may not have finished). While a tool takes longer than FILLER_AFTER, the agent says a
short filler; when one fails or times out, it says so plainly (FALLBACK) instead of
guessing.

Operators add server tools in a module of their own, named in SERVER_TOOL_MODULES:

    from services.server.tools import registry

    @registry.tool("Look up an order's status", {"type": "object", "properties": {"order": {"type": "string"}}})
    async def order_status(order: str) -> dict:
        ...
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.protocol import FunctionSpec, Tool, ToolCall, ToolCallOut, ToolResultIn, _Out

log = logging.getLogger("server.tools")

FILLER_AFTER = 0.5  # s a tool may take before the agent says FILLER
FILLER = "One moment."
FALLBACK = "Sorry, I could not do that just now."
MAX_ROUNDS = 3  # tool calls, answer, tool calls again... at most this many times in one reply


class ToolFailed(Exception):
    pass


@dataclass
class ServerTool:
    spec: Tool
    fn: Callable[..., Any]
    timeout: float


class ToolRegistry:
    def __init__(self) -> None:
        self.tools: dict[str, ServerTool] = {}

    def tool(self, description: str, parameters: dict[str, Any] | None = None, *, name: str | None = None,
             timeout: float = 5.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function (sync or async; keyword arguments from the call) as a server tool."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            spec = Tool(function=FunctionSpec(name=name or fn.__name__, description=description,
                                              parameters=parameters or {"type": "object", "properties": {}}))
            self.tools[spec.function.name] = ServerTool(spec, fn, timeout)
            return fn
        return register

    def load(self, modules: str) -> None:
        """Import the operator's modules (comma-separated): they register their tools on import."""
        for name in filter(None, (m.strip() for m in modules.split(","))):
            importlib.import_module(name)
            log.info("tools from %s loaded", name)


registry = ToolRegistry()


@registry.tool("The current date and time, in a time zone", {
    "type": "object", "properties": {"timezone": {"type": "string", "description": "IANA name, e.g. Europe/Paris; default UTC"}}})
def get_time(timezone: str = "UTC") -> dict[str, str]:
    try:
        now = datetime.now(zoneinfo.ZoneInfo(timezone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    return {"time": now.strftime("%H:%M"), "date": now.strftime("%A %d %B %Y"), "timezone": timezone}


class ToolRunner:
    """One session's tools: what the chat model is offered, and how a call is answered."""

    def __init__(self, specs: list[Tool], send: Callable[[_Out], None], client_timeout: float,
                 tools: ToolRegistry = registry) -> None:
        self.specs, self._send, self.client_timeout, self.registry = specs, send, client_timeout, tools
        self._waiting: dict[str, asyncio.Future[ToolResultIn]] = {}  # client calls in flight, by call id

    def offer(self) -> dict[str, Any]:
        """The chat request's `tools` (nothing when the agent has none)."""
        return {"tools": [t.model_dump() for t in self.specs]} if self.specs else {}

    async def answer(self, turn_id: int, calls: list[ToolCall], filler: Callable[[str], Awaitable[None]]) -> list[dict[str, Any]]:
        """Run the calls (together); the messages that give the model their results. A
        filler is said if they take longer than FILLER_AFTER. ToolFailed: one failed."""
        running = asyncio.gather(*(self.run(turn_id, c) for c in calls))
        running.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, whoever stops first
        try:
            done, _ = await asyncio.wait({running}, timeout=FILLER_AFTER)
            if not done:
                await filler(FILLER)
            results = await running
        finally:
            running.cancel()  # the turn was cut: its tools stop too
        assistant = {"role": "assistant", "content": None, "tool_calls": [c.wire() for c in calls]}
        return [assistant, *({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results, strict=True))]

    async def run(self, turn_id: int, call: ToolCall) -> str:
        """One call's result as text (JSON for structured results)."""
        if call.name not in {t.function.name for t in self.specs}:
            raise ToolFailed(f"the model called {call.name!r}, which this agent does not have")
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ToolFailed(f"{call.name}: arguments are not JSON ({exc.msg})") from exc
        if not isinstance(args, dict):
            raise ToolFailed(f"{call.name}: arguments must be a JSON object")
        server = self.registry.tools.get(call.name)
        if server is not None:  # arguments a model invented are not passed to Python (a TypeError otherwise)
            schema = server.spec.function.parameters
            if isinstance(props := schema.get("properties"), dict) and not schema.get("additionalProperties"):
                args = {k: v for k, v in args.items() if k in props}
        t0 = asyncio.get_running_loop().time()
        try:
            result = await (self._on_server(server, args) if server else self._on_client(turn_id, call, args))
        except ToolFailed as exc:
            log.warning("tool %s failed: %s", call.name, exc)
            raise
        log.info("tool %s (%s) answered in %.0f ms", call.name, "server" if server else "client",
                 (asyncio.get_running_loop().time() - t0) * 1000)
        return result

    async def _on_server(self, tool: ServerTool, args: dict[str, Any]) -> str:
        try:
            fn = tool.fn
            work = fn(**args) if inspect.iscoroutinefunction(fn) else asyncio.to_thread(fn, **args)
            result = await asyncio.wait_for(work, tool.timeout)
        except TimeoutError as exc:
            raise ToolFailed(f"{tool.spec.function.name} took longer than {tool.timeout:g} s") from exc
        except Exception as exc:  # noqa: BLE001 - an operator's tool: any failure is the tool's
            raise ToolFailed(f"{tool.spec.function.name}: {type(exc).__name__}: {exc}") from exc
        return result if isinstance(result, str) else json.dumps(result)

    async def _on_client(self, turn_id: int, call: ToolCall, args: dict[str, Any]) -> str:
        call_id = call.id if call.id not in self._waiting else f"{call.id}-{uuid.uuid4().hex[:6]}"
        future: asyncio.Future[ToolResultIn] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            self._send(ToolCallOut(turn_id=turn_id, call_id=call_id, name=call.name, arguments=args, timeout_s=self.client_timeout))
            result = await asyncio.wait_for(future, self.client_timeout)
        except TimeoutError as exc:
            raise ToolFailed(f"the client did not answer {call.name} within {self.client_timeout:g} s") from exc
        finally:
            self._waiting.pop(call_id, None)
        if result.error is not None:
            raise ToolFailed(f"the client's {call.name} failed: {result.error}")
        return result.content

    def result(self, msg: ToolResultIn) -> bool:
        """A client's tool_result; False: no call is waiting for it (late, or unknown)."""
        future = self._waiting.get(msg.call_id)
        if future is None or future.done():
            return False
        future.set_result(msg)
        return True
