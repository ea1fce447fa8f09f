"""The whole system with API keys, attacked and broken from outside: every HTTP endpoint
fuzzed from its OpenAPI schema, audio fuzzing, each model service killed mid-turn, a
client that stops reading, and a SIGTERM drain with live sessions (last: it ends the system)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile as sf
import websockets
from hypothesis import HealthCheck, Phase, given, settings

from testing.session_client import stream_pcm
from tests.conftest import OUTPUT, SPOKEN, rss_mb, service_pid, start_system, stop_system, system_env, wait_ready

pytestmark = pytest.mark.e2e
BASE = 29200
KEY = "hardening-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAMES = ("server", "stt", "chat", "tts")


async def aget(url: str, timeout: float = 10) -> httpx.Response:
    async with httpx.AsyncClient(headers=AUTH, timeout=timeout) as client:
        return await client.get(url)


@dataclass
class Secure:
    proc: subprocess.Popen
    urls: dict[str, str]

    @property
    def ws(self) -> str:
        return self.urls["server"].replace("http://", "ws://") + "/ws/"


@pytest.fixture(scope="module")
def secure() -> Iterator[Secure]:
    env = {**system_env(BASE), "API_KEYS": KEY, "RATE_LIMIT_PER_MINUTE": "0", "DRAIN_TIMEOUT": "15", "CHAT_MAX_TOKENS": "40",
           "CHAT_MAX_TOKENS_LIMIT": "40"}  # fuzzed requests ask for up to 4096 tokens: keep each one short
    proc, urls = start_system(env, OUTPUT / "hardening.log")
    system = Secure(proc, urls)
    try:
        yield system
    finally:
        if proc.poll() is None:
            stop_system(proc)


def test_every_service_needs_the_key_and_the_server_carries_it(secure):
    for name, url in secure.urls.items():
        assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 401, name
        assert httpx.get(f"{url}/metrics", headers=AUTH).status_code == 200, name
    assert httpx.post(f"{secure.urls['chat']}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 401
    assert httpx.post(f"{secure.urls['stt']}/transcribe", files={"file": ("a.wav", b"x")}).status_code == 401
    assert httpx.get(f"{secure.urls['server']}/status", headers=AUTH).json() == {"server": True, "stt": True, "chat": True, "tts": True}


async def test_a_turn_works_with_keys_everywhere(secure, corpus):
    res = await stream_pcm(secure.ws, corpus[0].audio, headers=AUTH)
    assert res.transcripts and res.audio_seconds() >= SPOKEN and not res.of("error")
    metrics = (await aget(f"{secure.urls['server']}/metrics")).text
    for name in ("s2s_server_turn_stage_seconds_bucket", "s2s_server_turns_total", "s2s_server_active_sessions",
                 "s2s_http_requests_total", "s2s_rejected_total"):
        assert name in metrics


async def test_a_client_that_stops_sending_still_gets_its_answer(secure, corpus):
    """No trailing silence at all: the turn is confirmed by the clock, not by audio frames."""
    res = await stream_pcm(secure.ws, corpus[4].audio, tail=0.0, headers=AUTH)
    assert res.transcripts and res.audio_seconds() >= SPOKEN


async def test_an_unknown_voice_is_refused_at_init(secure):
    async with websockets.connect(secure.ws + "voice", additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"agentId": "assistant", "userId": "t", "voice": "no-such-voice"}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["type"] == "error" and msg["code"] == "bad_init" and "GET /voices" in msg["message"]


# --------------------------------------------------------------------------- fuzzing


SERVER_ERRORS = {500, 502, 504}  # 501 (engine cannot) and 503 (not configured) are answers, not failures


@pytest.mark.parametrize("name", NAMES)
def test_every_json_endpoint_survives_schema_fuzzing(secure, name):
    url = secure.urls[name]
    spec = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
    schema = schemathesis.openapi.from_dict(spec)
    tried, failures, statuses = 0, [], set()

    def fuzzer(op):  # noqa: ANN001, ANN202 - one hypothesis test per operation
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def fuzz(case) -> None:  # noqa: ANN001
            nonlocal tried
            r = case.call(base_url=url, headers=AUTH, timeout=120)
            tried += 1
            statuses.add(r.status_code)
            if r.status_code in SERVER_ERRORS:
                failures.append(f"{op.method.upper()} {op.path} -> {r.status_code}: {r.text[:200]}")

        return fuzz

    for result in schema.get_all_operations():
        fuzzer(result.ok())()
    print(f"\n{name}: {tried} fuzzed requests, statuses {sorted(statuses)}")
    assert tried > 0 and not failures, failures[:5]


def _wav(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_audio_fuzzing_gets_4xx_never_500(secure, corpus):
    rng = np.random.default_rng(7)
    good = _wav(corpus[0].audio)
    cases = {
        "random bytes": rng.bytes(5000),
        "one odd byte": b"\x01",
        "empty": b"",
        "truncated wav": good[:60],
        "header only": good[:44],
        "lying length": good[:4] + (2**31).to_bytes(4, "little") + good[8:2000],
        "wav header then noise": good[:44] + rng.bytes(3001),
        "riff junk": b"RIFF\xff\xff\xff\xffWAVEfmt " + rng.bytes(300),
    }
    codes = {}
    for label, data in cases.items():
        r = httpx.post(f"{secure.urls['stt']}/transcribe", files={"file": ("x.wav", data)}, headers=AUTH, timeout=60)
        codes[label] = r.status_code
        assert r.status_code < 500, (label, r.text)
        if r.status_code >= 400:
            assert r.json()["error"]
    raw = httpx.post(f"{secure.urls['stt']}/transcribe", files={"file": ("x.pcm", b"\x00\x01\x02")}, headers=AUTH, timeout=60)
    assert raw.status_code < 500
    huge = httpx.post(f"{secure.urls['stt']}/transcribe", files={"file": ("x.wav", b"\0" * 27_000_000)}, headers=AUTH, timeout=60)
    assert huge.status_code == 413
    print(f"\naudio fuzzing: {codes}")


# --------------------------------------------------------------------------- faults


async def _kill_mid_turn(secure, clip, service: str, when: str, attempt: int) -> tuple[float | None, list[str], bool]:
    """A turn (spoken for STT, typed for chat and TTS); kill `service` when the first `when`
    message arrives. Seconds from the kill to the `<service>_failed` error, the error codes seen,
    and whether the turn ended (`tts_stream_end`) after the kill without that error."""
    port = int(secure.urls[service].rsplit(":", 1)[1])
    killed_at: list[float] = []
    err_at: list[float] = []
    codes: list[str] = []
    answered: list[dict] = []
    url = secure.ws + f"kill-{service}-{attempt}"
    async with websockets.connect(url, additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"agentId": "assistant", "userId": "t", "agentName": "T"}))

        async def feed() -> None:
            pcm = np.concatenate([np.zeros(8000, np.int16), clip.audio, np.zeros(16000 * 4, np.int16)])
            for i in range(0, len(pcm), 320):
                await ws.send(pcm[i : i + 320].tobytes())
                await asyncio.sleep(0.02)

        if service == "stt":  # STT is on the latency path of spoken turns only
            feeder = asyncio.create_task(feed())
        else:  # a typed turn streams at once: chat and TTS are still at work when the first output comes
            feeder = asyncio.create_task(asyncio.sleep(0))
            await ws.send(json.dumps({"type": "transcript", "text": "Please tell me a long story about the sea, with many details."}))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not err_at and not answered:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("type") == "tts_stream_end" and killed_at:
                    # STT: the retries outlasted the restart, nothing was lost; chat or TTS: the
                    # sampled reply was done before the kill ("Okay."), so there was nothing to fail
                    answered.append(msg)
                if msg.get("type") == when and not killed_at:
                    os.kill(service_pid(service, port), signal.SIGKILL)
                    killed_at.append(time.monotonic())
                if msg.get("type") == "error":
                    codes.append(msg["code"])
                    if msg["code"] == f"{service}_failed" and killed_at:
                        err_at.append(time.monotonic())
        finally:
            feeder.cancel()
    assert killed_at, (service, codes)
    return (err_at[0] - killed_at[0] if err_at else None), codes, bool(answered) and not err_at


@pytest.mark.parametrize(("service", "when"), [("stt", "speech_start"), ("chat", "response_text"), ("tts", "tts_stream")])
async def test_a_service_killed_mid_turn_gives_an_error_then_the_next_turn_works(secure, corpus, service, when):
    for attempt in range(3):
        took, codes, outran = await _kill_mid_turn(secure, corpus[1], service, when, attempt)
        if service == "stt" or not outran:
            break
        # a clean-clone run got a reply synthesized whole before the kill: nothing left to fail; ask again
        await asyncio.to_thread(wait_ready, secure.urls[service], 120)
    print(f"\n{service} killed at the first {when}: " + (f"{service}_failed after {took * 1000:.0f} ms" if took is not None
                                                        else "the turn was answered after the restart (retries)"))
    if service == "stt":
        # killed while the user still speaks; the launcher restarts it within ~1 s, so the
        # turn's bounded retries may outlast the gap (answered) or report it (an error)
        assert took is None or took < 6.0
    else:
        assert took is not None and took < 1.0
    await asyncio.to_thread(wait_ready, secure.urls[service], 120)  # the launcher restarts it
    res = await stream_pcm(secure.ws, corpus[2].audio, headers=AUTH)
    assert res.transcripts and res.audio_seconds() >= SPOKEN, res.story(OUTPUT / "hardening.log")


async def test_a_client_that_stops_reading_is_closed_and_others_are_served(secure, corpus):
    """The reader never reads while typed turns keep the server writing to it: the server's
    memory stays bounded (uvicorn's flow control, then our send timeout) and another session works."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = secure.urls["server"].removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    stuck = await websockets.connect(secure.ws + "stuck", sock=sock, additional_headers=AUTH, max_size=2**24, max_queue=1)
    pid = service_pid("server", BASE)
    before = _rss(pid)
    await stuck.send(json.dumps({"agentId": "assistant", "userId": "t", "agentName": "T"}))
    for i in range(6):
        await stuck.send(json.dumps({"type": "transcript", "text": f"Tell me a long story number {i}."}))
        await asyncio.sleep(0.5)
    res = await stream_pcm(secure.ws, corpus[3].audio, headers=AUTH)  # another session meanwhile
    assert res.transcripts and res.audio_seconds() >= SPOKEN
    closed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not closed:
        metrics = (await aget(f"{secure.urls['server']}/metrics")).text
        closed = 's2s_server_errors_total{code="slow_client"}' in metrics
        await asyncio.sleep(1)
    after = _rss(pid)
    # Whether the kernel's socket buffers ever fill with these few replies depends on the
    # machine; the close itself is proven in test_session_units.py with a socket that never drains.
    print(f"\nslow reader: closed={closed}, server RSS {before:.0f} -> {after:.0f} MB, other session latency {res.latency}")
    assert after - before < 60
    stuck.transport.abort()


def _rss(pid: int) -> float:
    return rss_mb(pid)


# --------------------------------------------------------------------------- drain (ends the system)


async def test_sigterm_drains_live_sessions(secure, corpus):
    ready_503 = None
    got: list[dict] = []
    async with websockets.connect(secure.ws + "drain", additional_headers=AUTH, max_size=2**24) as ws:
        await ws.send(json.dumps({"agentId": "assistant", "userId": "t", "agentName": "T"}))
        await ws.recv()
        await ws.send(json.dumps({"type": "transcript", "text": "Please tell me about the ocean."}))
        while True:  # the turn is in flight
            msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
            got.append(msg)
            if msg["type"] == "response_text":
                break
        t0 = time.monotonic()
        os.killpg(secure.proc.pid, signal.SIGTERM)
        while time.monotonic() - t0 < 5:
            try:
                if (await aget(f"{secure.urls['server']}/ready", timeout=0.5)).status_code == 503:
                    ready_503 = time.monotonic() - t0
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
        newcomer = await _refused_or_told(secure.ws + "late")
        code = None
        try:
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        closed_after = time.monotonic() - t0
    kinds = [m["type"] for m in got]
    print(f"\ndrain: /ready 503 after {ready_503}s, newcomer {newcomer}, session closed {code} after {closed_after:.2f}s")
    assert ready_503 is not None and ready_503 < 2.0  # at once, but a loaded machine takes a while to answer
    assert newcomer in ("refused", "draining")
    assert "tts_stream_end" in kinds, kinds  # the turn in flight finished
    assert got[-1]["type"] == "error" and got[-1]["code"] == "server_shutdown" and code in (1001, 1012)
    assert secure.proc.wait(60) == 0


async def _refused_or_told(url: str) -> str:
    try:
        async with websockets.connect(url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"agentId": "assistant", "userId": "t"}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            return msg.get("code", msg["type"])
    except (OSError, websockets.InvalidStatus, websockets.ConnectionClosed):
        return "refused"
