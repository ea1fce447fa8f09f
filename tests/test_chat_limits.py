"""The chat service alone (real Gemma 3 270M): context overflow and request validation
answer 4xx in the common error shape, never a 500 or a broken stream; /load and metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from services.chat.engines.base import ChatEngine, ChatMessage, GenerationOptions
from services.chat.engines.stops import StopFilter
from shared.service import ServiceError
from tests.conftest import BASE_PORT, OUTPUT, ROOT, stop_system, wait_ready

e2e = pytest.mark.e2e
CONTEXT = 2048
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "bright", "stars", "shine", "above", "old", "towns"]


def start_chat(port: int, log_name: str, parallel: int = 4) -> tuple[subprocess.Popen, str]:
    """The chat service alone on loopback, as the launcher runs it."""
    env = {**os.environ, "CHAT_PORT": str(port), "CHAT_HOST": "127.0.0.1", "CHAT_PARALLEL": str(parallel),
           "CHAT_N_CTX": str(CONTEXT), "API_KEYS": ""}
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with open(OUTPUT / log_name, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "services.chat.app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120, proc)
    except BaseException:
        stop_system(proc)
        raise
    return proc, url


@pytest.fixture(scope="module")
def chat() -> Iterator[str]:
    proc, url = start_chat(BASE_PORT + 43, "chat-limits.log")
    try:
        yield url
    finally:
        stop_system(proc)


def long_text(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def overflowing() -> list[dict[str, str]]:
    # ~2250 words in three messages of under 8000 characters: well over 2048 tokens
    turn = [{"role": "user", "content": long_text(750)}, {"role": "assistant", "content": "Okay."}]
    return [*turn, *turn, turn[0]]


def complete(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


@e2e
def test_context_overflow_is_400_with_token_counts(chat):
    r = complete(chat, {"messages": overflowing(), "max_tokens": 60})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["retryable"] is False
    assert body["context_tokens"] == CONTEXT and body["max_tokens"] == 60
    assert body["prompt_tokens"] > CONTEXT
    assert body["error"] == (f"prompt is {body['prompt_tokens']} tokens; this model's context is {CONTEXT} "
                             "(reply needs up to 60 more)")


@e2e
def test_streaming_overflow_is_400_before_the_stream(chat):
    """Documented behaviour: the prompt is tokenized and checked before any SSE byte is sent."""
    with httpx.stream("POST", f"{chat}/v1/chat/completions", json={"messages": overflowing(), "stream": True},
                      timeout=60) as r:
        r.read()
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["prompt_tokens"] > CONTEXT


@e2e
def test_reply_budget_counts_towards_the_context(chat):
    # ~1600-1800 prompt tokens: they fit, but not with 500 more for the reply
    # (max_tokens is clamped to CHAT_MAX_TOKENS_LIMIT, 512 by default)
    words = [{"role": "user", "content": long_text(700)}, {"role": "assistant", "content": "Okay."},
             {"role": "user", "content": long_text(700)}]
    r = complete(chat, {"messages": words, "max_tokens": 500})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["prompt_tokens"] < CONTEXT and body["max_tokens"] == 500
    assert "reply needs up to 500 more" in body["error"]


@e2e
@pytest.mark.parametrize("body", [
    {"messages": []},
    {"messages": [{"role": "robot", "content": "hi"}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": "x" * 8001}]},
    {"messages": [{"role": "user", "content": "hi"}] * 201},
    {"messages": "hello"},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": -1},
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
    {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
    {"messages": [{"role": "user", "content": "hi"}], "stop": ""},
    {"messages": [{"role": "user", "content": "hi"}], "model": "m" * 201},
    {},
], ids=["no-messages", "bad-role", "no-content", "long-content", "too-many", "not-a-list", "temperature",
        "max-tokens", "too-many-stops", "empty-stop", "long-model", "empty"])
def test_invalid_fields_are_4xx_in_the_error_shape(chat, body):
    for stream in (False, True):
        r = complete(chat, {**body, "stream": stream})
        assert r.status_code == 422, r.text
        err = r.json()
        assert err["retryable"] is False and isinstance(err["error"], str) and err["error"]


@e2e
def test_malformed_json_is_4xx(chat):
    r = httpx.post(f"{chat}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["retryable"] is False


@e2e
def test_stop_sequence_is_cut_from_the_reply(chat):
    body = {"messages": [{"role": "user", "content": "Can you tell me the capital of France?"}], "temperature": 0}
    full = complete(chat, body).json()["choices"][0]["message"]["content"]
    assert "Paris" in full, full
    cut = complete(chat, {**body, "stop": "Paris"}).json()["choices"][0]["message"]["content"]
    assert cut == full[: full.index("Paris")].strip()


@e2e
def test_load_and_metrics(chat):
    assert complete(chat, {"messages": [{"role": "user", "content": "Hi there."}], "max_tokens": 5}).status_code == 200
    assert httpx.get(f"{chat}/load").json() == {"in_flight": 0, "queued": 0, "slots": 4}
    text = httpx.get(f"{chat}/metrics").text
    for name in ("s2s_chat_time_to_first_token_seconds_count", "s2s_chat_tokens_generated_total",
                 "s2s_chat_active_sequences", "s2s_chat_queue_depth", "s2s_chat_step_seconds_count"):
        assert name in text, name


def test_stop_filter_holds_back_partial_stops():
    f = StopFilter(("\n", "User:"))
    assert [f.feed(p) for p in (b" Sure", b", Us", b"e it")] == [" Sure", ", ", "Use it"]
    assert f.feed(b" now\nUser:") == " now" and f.stopped
    g = StopFilter(("User:",))
    assert g.feed(b"ok Us") == "ok " and g.flush() == "Us"
    h = StopFilter(())
    assert h.feed("é".encode()[:1]) == "" and h.feed("é".encode()[1:]) == "é"  # a split UTF-8 character


class _FailsMidStream(ChatEngine):
    async def stream(self, messages: list[ChatMessage], opts: GenerationOptions):  # type: ignore[no-untyped-def]
        yield " Hello"
        raise ServiceError(503, "the model went away", retryable=True)


async def test_error_while_streaming_is_an_error_event_then_done(monkeypatch):
    """What cannot be checked before the stream starts ends it properly: an SSE error event, then [DONE]."""
    from services.chat import app as chat_app

    monkeypatch.setattr(chat_app, "engine", _FailsMidStream())
    monkeypatch.setattr(chat_app.state, "ready", True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=chat_app.app), base_url="http://chat") as http:
        r = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert '"content": " Hello"' in events[1]
    assert events[-2].startswith("event: error\ndata: ")
    assert '"message": "the model went away"' in events[-2] and '"retryable": true' in events[-2]
    assert events[-1] == "data: [DONE]"
