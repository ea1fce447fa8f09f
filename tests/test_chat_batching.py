"""Several sessions decoded together by the chat service (real Gemma 3 270M, 4 slots).

What we found about greedy determinism: at temperature 0 the service is deterministic
for a lone sequence however its prompt is split (prefix reuse) since flash attention is
off (with it on, logits moved by up to ~1.0 with the split). But a sequence decoded in
the same llama_decode as other sequences gets logits that can differ from a lone decode
by up to ~1.0 (llama.cpp's CPU kernels; multi-sequence ubatches), and this 270M model
has near-ties (top-2 logits 0.001 apart), so a batched greedy reply can take another
word than the same request alone. So this test asserts what must hold: every batched
stream completes, strongly determined replies stay the same (the capital of France,
the first numbers of a counting pattern), the end_of_turn probability agrees, and no
sequence gets another's reply (no crossed rows).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import BASE_PORT, stop_system
from tests.test_chat_limits import start_chat

pytestmark = pytest.mark.e2e

PROMPTS = ["Can you tell me the capital of France?", "Hi there, how are you today?",
           "What is a good way to relax after work?", "The weather was terrible this morning."]
NUMBERS = ", ".join(str(i) for i in range(1, 61)) + "."
COUNTING = [{"role": "user", "content": "Count to sixty."}, {"role": "assistant", "content": NUMBERS},
            {"role": "user", "content": "Again, count to sixty."}, {"role": "assistant", "content": NUMBERS},
            {"role": "user", "content": "Now count to sixty once more."}]  # a reply of ~230 tokens


@pytest.fixture(scope="module")
def chat() -> Iterator[str]:
    proc, url = start_chat(BASE_PORT + 42, "chat-batching.log", parallel=4)
    try:
        yield url
    finally:
        stop_system(proc)


async def stream(http: httpx.AsyncClient, url: str, messages: list[dict], **opts) -> tuple[str, list[dict], bool]:
    """(reply, extension events, saw [DONE])."""
    body = {"messages": messages, "stream": True, "temperature": 0, "end_of_turn": True, **opts}
    text, events, done = [], [], False
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            assert "error" not in event, event
            if event.get("object") == "end_of_turn":
                events.append(event)
            for choice in event.get("choices", []):
                text.append(choice["delta"].get("content") or "")
    return "".join(text), events, done


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_concurrent_greedy_replies_match_replies_alone(chat):
    async with httpx.AsyncClient(timeout=120) as http:
        alone = [await stream(http, chat, user(p)) for p in PROMPTS]
        alone.append(await stream(http, chat, COUNTING, max_tokens=300))
        # four short replies and a long one (~230 tokens) decoded together
        together = await asyncio.gather(*(stream(http, chat, user(p)) for p in PROMPTS),
                                        stream(http, chat, COUNTING, max_tokens=300))
    same = sum(a[0] == b[0] for a, b in zip(alone, together, strict=True))
    print(f"\nbatched greedy replies equal to the reply alone: {same} of {len(alone)}")
    for (a_text, a_events, a_done), (b_text, b_events, b_done) in zip(alone, together, strict=True):
        assert a_done and b_done
        assert a_text.strip() and b_text.strip()
        assert len(a_events) == 1 and len(b_events) == 1
        assert b_events[0]["probability"] == pytest.approx(a_events[0]["probability"], abs=0.1)
    for run in (alone, together):
        assert "Paris" in run[0][0] and all("Paris" not in r[0] for r in run[1:])
        assert run[4][0].strip().startswith("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,")
        assert all(not any(ch.isdigit() for ch in r[0]) for r in run[:4])  # no crossed sequences


async def test_end_of_turn_event_comes_first(chat):
    async with httpx.AsyncClient(timeout=60) as http:
        body = {"messages": user("I went to the store and"), "stream": True, "end_of_turn": True, "max_tokens": 5}
        seen: list[str] = []
        async with http.stream("POST", f"{chat}/v1/chat/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:") and line != "data: [DONE]":
                    event = json.loads(line[5:])
                    if event.get("object") == "end_of_turn":
                        seen.append("eot")
                        assert 0.0 <= event["probability"] <= 1.0
                    elif event["choices"][0]["delta"].get("content"):
                        seen.append("text")
    assert seen[0] == "eot" and seen.count("eot") == 1 and "text" in seen


def tokens_generated(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("s2s_chat_tokens_generated_total "):
            return float(line.split()[1])
    raise AssertionError("no s2s_chat_tokens_generated_total")


async def test_cancelled_stream_frees_its_slot(chat):
    """Closing the stream mid-reply (barge-in) stops generation: the slot is free long before
    the ~230-token reply would have ended, and the next request is served."""
    async with httpx.AsyncClient(timeout=60) as http:
        before = tokens_generated(chat)
        body = {"messages": COUNTING, "stream": True, "temperature": 0, "max_tokens": 300}
        async with http.stream("POST", f"{chat}/v1/chat/completions", json=body) as r:
            n = 0
            async for line in r.aiter_lines():
                n += line.startswith('data: {"id"')
                if n >= 6:
                    break
            assert (await http.get(f"{chat}/load")).json()["in_flight"] == 1
        deadline = time.monotonic() + 30  # liveness bound only
        while (await http.get(f"{chat}/load")).json()["in_flight"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await http.get(f"{chat}/load")).json() == {"in_flight": 0, "queued": 0, "slots": 4}
        assert tokens_generated(chat) - before < 150
        reply, _, done = await stream(http, chat, user("Hi there, how are you today?"))
        assert done and reply.strip()
