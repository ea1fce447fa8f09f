"""Tools through the embedded model (llama.cpp engine, Gemma 3 270M): a forced call's
arguments follow the tool's schema (a grammar writes them); in "auto" the reply is either
words or a well-formed call of an offered tool, never a half-written call; given a
result, it answers in words."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["city", "days"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def complete(system, **body) -> httpx.Response:
    return httpx.post(f"{system.chat}/v1/chat/completions", json={"temperature": 0, "max_tokens": 40, **body}, timeout=60)


def test_a_forced_call_has_arguments_that_follow_the_schema(system):
    r = complete(system, messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    args = json.loads(call["function"]["arguments"])
    assert choice["finish_reason"] == "tool_calls" and call["function"]["name"] == "get_weather"
    assert isinstance(args["city"], str) and isinstance(args["days"], int)
    print("\nforced:", args)


def test_auto_gives_words_or_a_well_formed_call_and_answers_from_a_result(system):
    for messages in (ASK, [{"role": "user", "content": "Hello, how are you?"}]):
        message = complete(system, messages=messages, tools=[WEATHER, CLOCK]).json()["choices"][0]["message"]
        for call in message.get("tool_calls") or []:
            assert call["function"]["name"] in ("get_weather", "get_time")
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
        assert message.get("tool_calls") or message["content"].strip()
        assert "[calls" not in (message["content"] or "")
        print("\nauto:", message)
    called = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temperature_c": 18, "sky": "sunny"}'}]
    message = complete(system, messages=called, tools=[WEATHER], tool_choice="none").json()["choices"][0]["message"]
    assert message["content"].strip() and "[calls" not in message["content"]
    print("after the result:", message["content"])


def test_required_with_several_tools_is_a_clear_400(system):
    r = complete(system, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required")
    assert r.status_code == 400 and "name the one" in r.json()["error"]


async def test_a_spoken_session_with_tools_answers_in_words(system):
    """The concierge agent (a server tool and a browser tool) over /ws, typed input: the
    embedded model may call a tool or not; either way the user hears words, never a call."""
    import asyncio
    import uuid

    import websockets

    init = {"agentId": "concierge", "userId": "tools-test", "agentName": "Concierge"}
    async with websockets.connect(system.ws + uuid.uuid4().hex, max_size=2**24) as ws:
        await ws.send(json.dumps(init))
        assert json.loads(await ws.recv())["type"] == "call_ready"
        await ws.send(json.dumps({"type": "transcript", "text": "What time is it where I am?"}))
        texts, calls = [], []
        async with asyncio.timeout(60):
            while True:
                m = json.loads(await ws.recv())
                if m["type"] == "tool_call":
                    calls.append(m["name"])
                    await ws.send(json.dumps({"type": "tool_result", "call_id": m["call_id"],
                                              "content": json.dumps({"time": "10:42", "timezone": "Europe/Paris"})}))
                elif m["type"] == "response_text":
                    texts.append(m["text"])
                elif m["type"] == "tts_stream_end":
                    break
    reply = "".join(texts)
    print(f"\ntool calls to the client: {calls}; reply: {reply!r}")
    assert set(calls) <= {"get_user_time"} and reply.strip() and "[calls" not in reply
