"""The gateway attacked from outside: credentials, tokens, Origins and limits, on a real
session server process (no models needed: refusals happen before any turn)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from shared.security import KeyRing, RateLimiter, SessionTokens, TokenError, origin_allowed
from tests.conftest import ROOT, rss_mb, service_pid, system_env, wait_ready

KEYS = ("key-one-0123456789", "key-two-0123456789")
INIT = json.dumps({"agentId": "assistant", "userId": "attacker", "agentName": "T"})


# --------------------------------------------------------------------------- units


def test_tokens_are_single_use_bound_and_signed():
    tokens = SessionTokens(b"secret", ttl=60)
    tok, _ = tokens.mint("s1", "k_1")
    with pytest.raises(TokenError, match="another session"):
        tokens.redeem(tok, "s2")
    assert tokens.redeem(tok, "s1") == "k_1"
    with pytest.raises(TokenError, match="already used"):
        tokens.redeem(tok, "s1")
    tok, _ = tokens.mint("s1", "k_1")
    payload, sig = tok.split(".")
    for bad in (payload + "." + sig[:-2] + "xx", payload[:-2] + "xx." + sig, payload, "", "a.b", tok + "x"):
        with pytest.raises(TokenError):
            tokens.redeem(bad, "s1")
    assert SessionTokens(b"other", 60).mint("s1", "k_1")[0] != tok
    with pytest.raises(TokenError, match="invalid"):
        SessionTokens(b"other", 60).redeem(tok, "s1")  # a token from another secret
    expired = SessionTokens(b"secret", ttl=0.01)
    tok, _ = expired.mint("s1", "k")
    time.sleep(0.05)
    with pytest.raises(TokenError, match="expired"):
        expired.redeem(tok, "s1")


def test_keyring_rate_limiter_and_origins():
    ring = KeyRing(list(KEYS))
    assert ring.identify(KEYS[1]) and ring.identify(KEYS[0]) != ring.identify(KEYS[1])
    assert ring.identify("nope") is None and not KeyRing([]).enabled
    limiter = RateLimiter(per_minute=60)  # burst 10
    assert all(limiter.check("a") is None for _ in range(10))
    wait = limiter.check("a")
    assert wait is not None and 0 < wait <= 1.0
    assert limiter.check("b") is None  # keys are limited separately
    h = lambda **kw: httpx.Headers(kw)  # noqa: E731
    assert origin_allowed(h(host="example.com:8000"), [])  # no Origin: not a browser
    assert origin_allowed(h(origin="http://example.com:8000", host="example.com:8000"), [])
    assert origin_allowed(h(origin="http://localhost:5173", host="example.com:8000"), [])
    assert not origin_allowed(h(origin="https://evil.example", host="example.com:8000"), [])
    assert not origin_allowed(h(origin="http://example.com:9999", host="example.com:8000"), [])
    assert origin_allowed(h(origin="https://app.example", host="x"), ["https://app.example"])


# --------------------------------------------------------------------------- a guarded server


def _server(base: int, **env: str) -> subprocess.Popen:
    full = {**system_env(base), "API_KEYS": ",".join(KEYS), "LOG_LEVEL": "WARNING", **env}
    proc = subprocess.Popen([sys.executable, "launcher.py", "--services", "server"], cwd=ROOT, env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{base}", 60, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


BASE = 29100


@pytest.fixture(scope="module")
def guarded() -> Iterator[str]:
    proc = _server(BASE, SERVER_MAX_SESSIONS="3", SERVER_MAX_SESSIONS_PER_KEY="2", SERVER_MAX_QUEUED="1", SERVER_SESSION_IDLE_TIMEOUT="1.5",
                   SERVER_SESSION_MAX_DURATION="4", TOKEN_TTL="2", SERVER_MAX_BODY_MB="0.01",
                   RATE_LIMIT_PER_MINUTE="0")  # the 429 test has a server of its own
    try:
        yield f"127.0.0.1:{BASE}"
    finally:
        _stop(proc)


def auth(i: int = 0, bearer: bool = True) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[i]}"} if bearer else {"X-API-Key": KEYS[i]}


async def refusal(url: str, **kw) -> int:
    """The HTTP status a WebSocket handshake was refused with (0: it was accepted)."""
    try:
        async with websockets.connect(url, **kw):
            return 0
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def mint(host: str, sid: str) -> str:
    r = httpx.post(f"http://{host}/v1/session-tokens", json={"session_id": sid}, headers=auth())
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_http_needs_a_key_except_probes(guarded):
    for path in ("/health", "/ready"):
        assert httpx.get(f"http://{guarded}{path}").status_code == 200
    r = httpx.get(f"http://{guarded}/agents")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(f"http://{guarded}/agents", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(f"http://{guarded}/metrics", headers={"X-API-Key": "wrong"}).status_code == 403
    assert httpx.get(f"http://{guarded}/agents", headers=auth(0)).status_code == 200
    assert httpx.get(f"http://{guarded}/agents", headers=auth(1, bearer=False)).status_code == 200
    assert httpx.post(f"http://{guarded}/v1/session-tokens", json={}).status_code == 401


async def test_websocket_refusals_happen_before_accept(guarded):
    ws = f"ws://{guarded}/ws/"
    assert await refusal(ws + "s1") == 401
    assert await refusal(ws + "s1", additional_headers={"Authorization": "Bearer wrong"}) == 403
    assert await refusal(ws + "s1?token=garbage") == 403
    tok = mint(guarded, "s2")
    assert await refusal(ws + "s3?token=" + tok) == 403  # bound to another session
    payload, sig = tok.split(".")
    assert await refusal(ws + "s2?token=" + payload + "." + sig[::-1]) == 403  # mutated signature
    assert await refusal(ws + "s2?token=" + tok) == 0
    assert await refusal(ws + "s2?token=" + tok) == 403  # replayed
    late = mint(guarded, "s4")
    await asyncio.sleep(2.5)  # TOKEN_TTL=2
    assert await refusal(ws + "s4?token=" + late) == 403  # expired
    assert await refusal(ws + "s5", additional_headers=auth(), origin="https://evil.example") == 403
    assert await refusal(ws + "s5", additional_headers=auth(), origin="http://localhost:3000") == 0
    assert await refusal(ws + "bad%20id", additional_headers=auth()) == 400
    async with httpx.AsyncClient() as client:
        m = (await client.get(f"http://{guarded}/metrics", headers=auth())).text
    assert 's2s_rejected_total{reason="bad_token",service="server"}' in m and 'reason="origin"' in m


async def _session(host: str, key: int = 0, init: str = INIT):
    ws = await websockets.connect(f"ws://{host}/ws/s{time.monotonic_ns()}", additional_headers=auth(key), max_size=2**24)
    await ws.send(init)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def _admitted(host: str, key: int = 0, within: float = 5.0):
    """A session once the places of those just closed are free (the server frees them as
    their handlers end, a moment after the client's close)."""
    end = time.monotonic() + within
    while True:
        ws, first = await _session(host, key)
        if first["type"] == "call_ready" or time.monotonic() > end:
            return ws, first
        await ws.close()
        await asyncio.sleep(0.1)


async def _until_closed(ws, timeout: float = 10) -> tuple[list[dict], int | None]:
    msgs = []
    try:
        while True:
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except websockets.ConnectionClosed as exc:
        return msgs, exc.rcvd.code if exc.rcvd else None


async def test_oversize_frames_close_1009_and_memory_stays_flat(guarded):
    pid = service_pid("server", BASE)
    before = rss_mb(pid)
    for i in range(200):
        ws, ready = await _session(guarded)
        assert ready["type"] == "call_ready"
        await ws.send(b"\0" * (8 * 2**20 if i < 5 else 2**20))  # 8 MiB (4 min of audio), then 1 MiB
        _, code = await _until_closed(ws)
        assert code == 1009
    after = rss_mb(pid)
    print(f"\nserver RSS {before:.0f} MB -> {after:.0f} MB over 200 oversize frames")
    assert after - before < 20


async def test_oversize_init_and_invalid_fields(guarded):
    ws, first = await _session(guarded, init=json.dumps({"agentId": "a", "userId": "u", "systemPrompt": "x" * 20000}))
    msgs, code = await _until_closed(ws)
    assert first["type"] == "error" and code == 1009
    for bad in ({"language": "x" * 5000}, {"voice": "../../etc/passwd"}, {"voice": "/usr/lib/x.onnx"},
                {"speechDetector": {"energy_threshold": 1e9}}):
        ws, first = await _session(guarded, init=json.dumps({"agentId": "a", "userId": "u", **bad}))
        _, code = await _until_closed(ws)
        assert first["type"] == "error" and first["code"] == "bad_init" and code == 1008, bad


async def test_session_caps_per_key_and_per_server(guarded):
    held = []
    try:
        for _ in range(2):
            ws, ready = await _session(guarded, key=0)
            assert ready["type"] == "call_ready"
            held.append(ws)
        ws, refused = await _session(guarded, key=0)
        _, code = await _until_closed(ws)
        assert refused["code"] == "key_full" and code == 1013 and "try again" in refused["message"]
        ws, ready = await _session(guarded, key=1)
        held.append(ws)
        assert ready["type"] == "call_ready"
        # the server is full: the next newcomer waits in the queue (one place), the one after is refused
        waiting, queued = await _session(guarded, key=1)
        assert queued["type"] == "queued" and queued["position"] == 1 and queued["estimated_wait_s"] >= 0
        ws, refused = await _session(guarded, key=1)
        _, code = await _until_closed(ws)
        assert refused["code"] == "server_full" and code == 1013
        await waiting.send(b"\0" * 640)  # audio while queued is dropped, not an error
        await held.pop(0).close()  # a place comes free: it goes to the one waiting
        ready = json.loads(await asyncio.wait_for(waiting.recv(), 5))
        assert ready["type"] == "call_ready"
        held.append(waiting)
    finally:
        for ws in held:
            await ws.close()
    ws, ready = await _admitted(guarded, key=0)  # capacity comes back when sessions end
    assert ready["type"] == "call_ready"
    await ws.close()


async def test_a_queued_session_is_refused_after_the_queue_timeout():
    proc = _server(BASE + 5, SERVER_MAX_SESSIONS="1", SERVER_MAX_QUEUED="2", SERVER_QUEUE_TIMEOUT="1",
                   RATE_LIMIT_PER_MINUTE="0")
    host = f"127.0.0.1:{BASE + 5}"
    try:
        first, ready = await _session(host)
        assert ready["type"] == "call_ready"
        t0 = time.monotonic()  # the second's queue timeout runs from when it was queued
        second, queued = await _session(host, key=1)
        third, queued3 = await _session(host, key=1)
        assert (queued["position"], queued3["position"]) == (1, 2)
        msgs, code = await _until_closed(second)
        assert msgs[-1]["code"] == "server_full" and code == 1013 and 0.5 < time.monotonic() - t0 < 5
        await third.close()
        await first.close()
        ws, ready = await _admitted(host)
        assert ready["type"] == "call_ready"
        await ws.close()
    finally:
        _stop(proc)


async def test_idle_and_duration_limits(guarded):
    ws, _ = await _session(guarded)
    t0 = time.monotonic()
    msgs, code = await _until_closed(ws)
    assert msgs[-1]["code"] == "session_expired" and code == 1000 and 1.0 < time.monotonic() - t0 < 5
    ws, _ = await _session(guarded)
    t0 = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed):
        while time.monotonic() - t0 < 10:  # a talkative client is never idle, but its session still ends
            await ws.send(b"\0" * 640)
            await asyncio.sleep(0.02)
    msgs, _ = await _until_closed(ws)
    assert 3.5 < time.monotonic() - t0 < 8
    assert ws.close_code == 1000
    assert [m["code"] for m in msgs if m["type"] == "error"] == ["session_expired"], msgs  # told why, before the close


def test_request_bodies_are_checked_before_they_are_read(guarded):
    host, port = guarded.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:  # announces 1 GB, sends 2 bytes
        sock.sendall(f"POST /v1/session-tokens HTTP/1.1\r\nHost: {guarded}\r\nAuthorization: Bearer {KEYS[0]}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{}".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    chunks = (b"x" * 4096 for _ in range(10))  # chunked: no Content-Length, 40 kB > 10 kB limit
    r = httpx.post(f"http://{guarded}/v1/session-tokens", content=chunks, headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_rate_limit_per_key_answers_429_with_retry_after():
    proc = _server(BASE + 10, RATE_LIMIT_PER_MINUTE="12")  # a burst of 2, then one per 5 s
    try:
        url = f"http://127.0.0.1:{BASE + 10}/agents"
        codes = [httpx.get(url, headers=auth(0)).status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[-1] == 429
        r = httpx.get(url, headers=auth(0))
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 6
        assert httpx.get(url, headers=auth(1)).status_code == 200  # another key has its own budget
        assert httpx.get(f"http://127.0.0.1:{BASE + 10}/health").status_code == 200  # probes are never limited
    finally:
        _stop(proc)


def test_open_mode_binds_loopback_and_says_so():
    env = {**system_env(BASE + 20), "API_KEYS": ""}
    out = subprocess.run([sys.executable, "-c", "from shared.service import open_access_note as n;"
                          "print(n('server','127.0.0.1'));print(n('server','0.0.0.0'))"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "open access, listening on 127.0.0.1 only" in out and "WARNING" in out and "0.0.0.0" in out


async def test_a_resume_token_works_only_for_the_credentials_that_opened_the_session(guarded):
    sid = f"r{time.monotonic_ns()}"
    ws = await websockets.connect(f"ws://{guarded}/ws/{sid}", additional_headers=auth(0))
    await ws.send(INIT)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    token = ready["resume_token"]
    ws.transport.abort()  # the network drops: the session waits for its client
    resume = json.dumps({**json.loads(INIT), "resume": {"token": token, "received": 0}})
    other = await websockets.connect(f"ws://{guarded}/ws/{sid}", additional_headers=auth(1))
    await other.send(resume)
    msgs, code = await _until_closed(other)
    assert msgs[0]["code"] == "resume_refused" and "other credentials" in msgs[0]["message"] and code == 1008
    # the browser's way back: a fresh single-use session token from the same key, for the same session id
    back = await websockets.connect(f"ws://{guarded}/ws/{sid}?token={mint(guarded, sid)}")
    await back.send(resume)
    again = json.loads(await asyncio.wait_for(back.recv(), 5))
    assert again["type"] == "call_ready" and again["resumed"] and again["resume_token"] != token
    await back.close()
