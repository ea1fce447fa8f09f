"""Two replicas each of STT and TTS behind one session server: load spreads over both, and
a replica killed mid-run (and left dead) loses no turn."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import websockets

from testing.session_client import stream_pcm
from tests.conftest import OUTPUT, ROOT, SPOKEN, system_env, wait_ready

pytestmark = pytest.mark.e2e
BASE = 29300
PORTS = {"server": BASE, "stt": BASE + 1, "chat": BASE + 2, "tts": BASE + 3, "stt2": BASE + 4, "tts2": BASE + 5}


def _serve(name: str, port: int, env: dict[str, str], log) -> subprocess.Popen:  # noqa: ANN001
    service = name.rstrip("2")
    env = {**env, f"{service.upper()}_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-m", "shared.serve", service], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def replicated() -> Iterator[dict[str, subprocess.Popen]]:
    env = {
        **system_env(BASE),
        "SERVER_STT_URLS": f"http://127.0.0.1:{PORTS['stt']},http://127.0.0.1:{PORTS['stt2']}",
        "SERVER_TTS_URLS": f"ws://127.0.0.1:{PORTS['tts']}/tts/stream,ws://127.0.0.1:{PORTS['tts2']}/tts/stream",
    }
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / "replicas.log", "w")  # noqa: SIM115 - closed at the end of the module
    procs = {name: _serve(name, port, env, log) for name, port in PORTS.items()}
    try:
        for name, port in PORTS.items():
            wait_ready(f"http://127.0.0.1:{port}", 240, procs[name])
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            p.wait(60)
        log.close()


LONG_REPLIES = "A chatty voice assistant who always answers in four or five long spoken sentences."


def _served(name: str) -> float:
    """Requests and streams a replica has answered, from its own metrics."""
    text = httpx.get(f"http://127.0.0.1:{PORTS[name]}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("s2s_http_requests_total{") and ('route="/transcribe' in line or 'route="/tts/stream' in line
                                                            or 'route="/end-of-turn' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_load_spreads_and_a_dead_replica_loses_no_turn(replicated, corpus):
    ws = f"ws://127.0.0.1:{BASE}/ws/"
    clips = corpus[:4]
    results = await asyncio.gather(*(stream_pcm(ws, c.audio) for c in clips))  # four at once
    assert all(r.transcripts and r.audio_seconds() >= SPOKEN for r in results)
    spread = {n: _served(n) for n in ("stt", "stt2", "tts", "tts2")}
    print(f"\nrequests per replica after 4 concurrent turns: {spread}")
    assert all(v > 0 for v in spread.values()), spread

    # kill a TTS replica while it speaks: the rest of that answer comes from the other one.
    # Replies are sampled: one short enough to be synthesized before we look cannot be cut
    # over (no replica busy), so such a turn is asked again, up to three times.
    killed = False
    for attempt in range(3):
        async with websockets.connect(ws + f"failover{attempt}", max_size=2**24) as sock:
            await sock.send(json.dumps({"agentId": "assistant", "userId": "t", "systemPrompt": LONG_REPLIES}))
            await sock.send(json.dumps({"type": "transcript", "text": "Tell me five things about the sea."}))
            got, audio, looked = [], 0, False
            while True:
                msg = json.loads(await asyncio.wait_for(sock.recv(), 30))
                got.append(msg["type"])
                if msg["type"] == "tts_stream":
                    audio += 1
                    if not looked:  # the replica this answer streams from, as the server reports it
                        looked = True
                        async with httpx.AsyncClient() as client:
                            status = (await client.get(f"http://127.0.0.1:{BASE}/status")).json()
                        busy = [r["url"] for r in status["replicas"]["tts"] if r["in_flight"]]
                        if busy:
                            victim = "tts" if f":{PORTS['tts']}/" in busy[0] else "tts2"
                            os.killpg(replicated[victim].pid, signal.SIGKILL)
                            killed = True
                if msg["type"] == "metrics":
                    break
        if killed:
            break
    assert killed and "tts_stream_end" in got and "error" not in got, got
    assert audio >= 5, attempt

    # one STT replica dead (and never restarted): every later turn is still answered
    os.killpg(replicated["stt"].pid, signal.SIGKILL)
    for clip in corpus[4:6]:
        res = await stream_pcm(ws, clip.audio)
        assert res.transcripts and res.audio_seconds() >= SPOKEN and not res.of("error")


async def test_the_gateway_speaks_through_the_replica_left(replicated):
    """OpenAI's /v1/audio/speech goes through the same Upstreams as the sessions: with a TTS
    replica just killed (the pool has not yet seen it go), every request is still answered."""
    alive = [n for n in ("tts", "tts2") if replicated[n].poll() is None]
    if len(alive) == 2:  # the first test may have left both up (it kills the busy one)
        os.killpg(replicated["tts2"].pid, signal.SIGKILL)
        replicated["tts2"].wait(10)
    body = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "input": "The replica left speaks this sentence."}
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(*(client.post(f"http://127.0.0.1:{BASE}/v1/audio/speech", json=body) for _ in range(4)))
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.content[:4] == b"RIFF" and len(r.content) > 24_000  # > 0.5 s of 24 kHz int16
