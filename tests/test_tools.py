"""Tools, round trip: a turn's chat goes through the real chat service (`openai` engine) to a
fake upstream that speaks OpenAI's streamed wire format (tool_calls in parts); the call
runs on the server or on the client; its result goes back; the answer is spoken. No models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from services.chat import app as chat_app
from services.chat.engines.openai_compat import OpenAICompatEngine
from services.server.echo import EchoGuard
from services.server.session.channel import Outbox
from services.server.session.playout import Playout
from services.server.session.turn import TurnDeps
from services.server.session.turn_taker import TurnTaker
from services.server.tools import FALLBACK, FILLER, ToolRegistry, ToolRunner, registry
from shared.clients import ChatClient
from shared.config import ChatSettings, ServerSettings
from shared.protocol import FunctionSpec, Tool, ToolCallOut, ToolResultIn, TtsStreamEnd
from testing.fakes import FakeSpeeches, RecordingChannel, eventually

LOCATION = Tool(function=FunctionSpec(name="get_user_location", description="Where the user is (asked of their device)"))


class FakeOpenAI:
    """An OpenAI-compatible upstream: with tools offered it calls the first one, its
    arguments streamed in three parts as OpenAI does; given a tool result it answers with it."""

    def __init__(self, arguments: str = '{"timezone": "UTC"}') -> None:
        self.arguments = arguments
        self.bodies: list[dict[str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "fake"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        last = body["messages"][-1]
        if last["role"] == "tool":
            deltas = [{"content": "Here it is: "}, {"content": last["content"]}, {}]
            finish = "stop"
        elif body.get("tools") and body.get("tool_choice") != "none":
            name = body["tools"][0]["function"]["name"]
            a = self.arguments
            deltas = [{"tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": name, "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": a[: len(a) // 2]}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": a[len(a) // 2 :]}}]}]
            finish = "tool_calls"
        else:
            deltas, finish = [{"content": "Just words."}], "stop"
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
        events += [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})


class Rig:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tools: list[Tool], upstream: FakeOpenAI,
                 server_tools: ToolRegistry = registry, client_timeout: float = 5.0) -> None:
        engine = OpenAICompatEngine(ChatSettings(engine="openai", openai_base_url="http://upstream/v1", openai_model="fake"))
        engine.client = httpx.AsyncClient(base_url="http://upstream/v1", transport=httpx.MockTransport(upstream.handler))
        monkeypatch.setattr(chat_app, "engine", engine)
        monkeypatch.setattr(chat_app.state, "ready", True)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=chat_app.app), base_url="http://chat")
        self.channel = RecordingChannel()
        self.outbox = Outbox(self.channel, on_gone=lambda: None)
        self.outbox.start()
        self.speeches = FakeSpeeches(samples_per_piece=2400)
        self.runner = ToolRunner(tools, self.outbox.put, client_timeout, server_tools)
        deps = TurnDeps(chat=ChatClient(http, "http://chat"), open_speech=self.speeches, outbox=self.outbox,  # type: ignore[arg-type]
                        on_audio_sent=lambda turn_id, pcm: None, voice=None, tools=self.runner)
        self.tt = TurnTaker(deps, Playout(EchoGuard()), ServerSettings(streaming_stt=False, end_of_turn_policy="text"), "Be brief.")

    async def ask(self, text: str) -> None:
        await self.tt.typed(text)

    async def spoken(self, timeout: float = 10.0) -> str:
        """Once the turn's stream ended: everything the speech was asked to say."""
        async with asyncio.timeout(timeout):
            while not self.channel.of(TtsStreamEnd):
                await asyncio.sleep(0.01)
        return " ".join(s for sp in self.speeches.opened for s in sp.said)


async def test_a_server_tool_call_round_trips_through_the_chat_service(monkeypatch):
    up = FakeOpenAI()
    rig = Rig(monkeypatch, [registry.tools["get_time"].spec], up)
    await rig.ask("What time is it?")
    said = await rig.spoken()
    first, second = up.bodies
    assert first["tools"][0]["function"]["name"] == "get_time"
    assistant, result = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "get_time", "arguments": '{"timezone": "UTC"}'}  # reassembled
    assert result["role"] == "tool" and result["tool_call_id"] == "call_abc"
    got = json.loads(result["content"])
    assert got["timezone"] == "UTC" and len(got["time"]) == 5
    assert got["time"] in said and FILLER not in said  # a quick tool needs no filler
    assert not rig.channel.of(ToolCallOut)


async def test_a_client_tool_goes_to_the_client_and_its_result_comes_back(monkeypatch):
    up = FakeOpenAI(arguments="{}")
    rig = Rig(monkeypatch, [LOCATION], up)
    await rig.ask("Where am I?")
    async with asyncio.timeout(5):
        while not rig.channel.of(ToolCallOut):
            await asyncio.sleep(0.01)
    (call,) = rig.channel.of(ToolCallOut)
    assert call.name == "get_user_location" and call.arguments == {} and call.call_id == "call_abc"
    assert not rig.runner.result(ToolResultIn(type="tool_result", call_id="call_other", content="x"))  # unknown: refused
    assert rig.runner.result(ToolResultIn(type="tool_result", call_id=call.call_id, content='{"city": "Lyon"}'))
    said = await rig.spoken()
    assert "Lyon" in said and json.loads(up.bodies[1]["messages"][-1]["content"]) == {"city": "Lyon"}


async def test_a_slow_tool_gets_a_filler_and_a_failing_one_a_plain_fallback(monkeypatch):
    tools = ToolRegistry()

    @tools.tool("Slow")
    async def slow() -> str:
        await asyncio.sleep(0.8)
        return "done slowly"

    @tools.tool("Broken", timeout=0.3)
    async def broken() -> str:
        await asyncio.sleep(5)
        return "never"

    up = FakeOpenAI(arguments="{}")
    rig = Rig(monkeypatch, [tools.tools["slow"].spec], up, tools)
    await rig.ask("Do the slow thing.")
    said = await rig.spoken()
    assert said.index(FILLER) < said.index("done slowly")

    up = FakeOpenAI(arguments="{}")
    rig = Rig(monkeypatch, [tools.tools["broken"].spec], up, tools)
    await rig.ask("Do the broken thing.")
    said = await rig.spoken()
    assert FALLBACK in said and len(up.bodies) == 1  # said plainly; the model is not asked to guess


async def test_a_client_that_never_answers_gets_the_fallback(monkeypatch):
    rig = Rig(monkeypatch, [LOCATION], FakeOpenAI(arguments="{}"), client_timeout=0.3)
    await rig.ask("Where am I?")
    assert FALLBACK in await rig.spoken()


async def test_a_speculative_answer_does_not_act_until_confirmed(monkeypatch):
    up = FakeOpenAI(arguments="{}")
    rig = Rig(monkeypatch, [LOCATION], up)
    turn = rig.tt.open_turn()

    async def transcribe() -> str:
        return "Where am I?"

    rig.tt.speculate(0.0, transcribe, None)
    await asyncio.sleep(0.5)
    assert len(up.bodies) == 1 and not rig.channel.of(ToolCallOut)  # the model asked, the call waits
    await rig.tt.promote(turn)
    async with asyncio.timeout(5):
        while not rig.channel.of(ToolCallOut):
            await asyncio.sleep(0.01)
    await rig.tt.close()  # the call is never answered: the turn ends here


@pytest.mark.parametrize("cut", [False, True], ids=["resumed", "cut"])
async def test_a_paused_answer_does_not_act_until_it_goes_on_and_a_cut_one_never_does(monkeypatch, cut):
    """Speech over the reply pauses it; that speech may be "no, wait": the tool call waits for
    the words to decide. Resumed, it goes out; cut, it never does."""
    up = FakeOpenAI(arguments="{}")
    rig = Rig(monkeypatch, [LOCATION], up)
    turn = rig.tt.open_turn()

    async def transcribe() -> str:
        return "Where am I?"

    rig.tt.speculate(0.0, transcribe, None)
    assert await eventually(lambda: len(up.bodies) == 1)  # the model asked for the tool; the call waits
    await asyncio.sleep(0.1)
    await rig.tt.promote(turn)
    rig.tt.pause()  # speech over it, before the call could go out
    assert rig.tt.paused is turn
    await asyncio.sleep(0.3)
    assert not rig.channel.of(ToolCallOut)
    if cut:
        await rig.tt.interrupt()
        await asyncio.sleep(0.3)
        assert not rig.channel.of(ToolCallOut) and len(up.bodies) == 1
    else:
        rig.tt.resume()
        assert await eventually(lambda: bool(rig.channel.of(ToolCallOut)))
    await rig.tt.close()


async def test_the_chat_service_streams_and_returns_tool_calls_in_openai_format(monkeypatch):
    up = FakeOpenAI()
    Rig(monkeypatch, [], up)
    body = {"messages": [{"role": "user", "content": "time?"}], "tools": [registry.tools["get_time"].spec.model_dump()]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=chat_app.app), base_url="http://chat") as http:
        r = await http.post("/v1/chat/completions", json=body)
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert choice["message"]["tool_calls"] == [{"id": "call_abc", "type": "function",
                                                    "function": {"name": "get_time", "arguments": '{"timezone": "UTC"}'}}]
        r = await http.post("/v1/chat/completions", json={**body, "stream": True})
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and "[DONE]" not in line]
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert any(e["choices"][0]["delta"].get("tool_calls") for e in events)
    assert up.bodies[0]["tools"] == body["tools"]  # passed through to the upstream
