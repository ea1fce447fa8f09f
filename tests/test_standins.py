"""The stand-in engines (bench/standins) speak the real services' protocols, read by the
session server's own clients (shared/clients.py); and bench/load.py's stand-in mode runs
a tiny configuration end to end through the real server. No timing assertions."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.standins.chat import END_OF_TURN_PROBABILITY, REPLY
from bench.standins.tts import FRAME, TONE
from shared.clients import ChatClient, SttClient, TtsStream
from shared.protocol import TtsEnd
from tests.conftest import BASE_PORT, ROOT, stop_system, wait_ready

PORTS = {"stt": BASE_PORT + 21, "chat": BASE_PORT + 22, "tts": BASE_PORT + 23}


@pytest.fixture(scope="module")
def standins() -> Iterator[dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.standins", *(a for n, p in PORTS.items() for a in (f"--{n}-port", str(p)))],
                            cwd=ROOT, start_new_session=True)
    urls = {n: f"http://127.0.0.1:{p}" for n, p in PORTS.items()}
    try:
        for u in urls.values():
            wait_ready(u, 30, proc)
        yield urls
    finally:
        stop_system(proc)


async def test_stt_answers_like_the_real_service(standins: dict[str, str]) -> None:
    pcm = np.zeros(16000 * 2, np.float32)
    async with httpx.AsyncClient() as http:
        assert (await SttClient(http, standins["stt"]).transcribe(pcm)).endswith(".")
        r = await http.post(standins["stt"] + "/transcribe", files={"audio_file": ("u.pcm", b"\0\0" * 32000, "audio/l16")})
        body = r.json()
        assert r.status_code == 200 and {"text", "language", "duration", "processing_time"} <= body.keys()
        assert body["duration"] == 2.0
        assert (await http.post(standins["stt"] + "/transcribe")).status_code == 400


async def test_chat_streams_end_of_turn_then_deltas(standins: dict[str, str]) -> None:
    seen: list[float] = []
    async with httpx.AsyncClient() as http:
        chat = ChatClient(http, standins["chat"])
        text = "".join([d async for d in chat.stream([{"role": "user", "content": "Hi"}], seen.append)])
        assert text == REPLY and seen == [END_OF_TURN_PROBABILITY]
        completions = standins["chat"] + "/v1/chat/completions"
        async with http.stream("POST", completions, json={"messages": [{"role": "user", "content": "Hi"}], "stream": True}) as r:
            lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]" and "end_of_turn" not in "".join(lines)  # only when asked for
        r = await http.post(completions, json={"messages": [{"role": "user", "content": "Hi"}]})
        assert r.json()["choices"][0]["message"]["content"] == REPLY


async def test_tts_streams_frames_then_end_and_cancels(standins: dict[str, str]) -> None:
    tts = await TtsStream.connect(standins["tts"].replace("http://", "ws://") + "/tts/stream")
    try:
        await tts.speak("Hello there.", None, "7")
        frames, end = [], None
        async for ev in tts.events(idle_timeout=5):
            if isinstance(ev, np.ndarray):
                frames.append(ev)
            else:
                end = TtsEnd.model_validate(ev)
                break
        assert end is not None and end.id == "7" and end.samples == sum(map(len, frames)) == len(TONE)
        assert all(len(f) <= FRAME for f in frames)
        await tts.speak("This one is cancelled.", None, "8")
        await tts.ws.send('{"type":"cancel"}')
        while (msg := await asyncio.wait_for(tts.ws.recv(), 5)) != '{"type":"cancelled"}':
            assert isinstance(msg, bytes) or json.loads(msg)["type"] == "end"
        with pytest.raises(TimeoutError):  # nothing of the cancelled request follows
            await asyncio.wait_for(tts.ws.recv(), 0.3)
    finally:
        await tts.close()


@pytest.mark.e2e
def test_load_bench_standin_mode_end_to_end(tmp_path: Path) -> None:
    from bench.load import main

    out = main(["--standins", "--sessions", "5", "--turns", "1", "--interval", "1", "--base-port", str(BASE_PORT + 30),
                "--json", str(tmp_path / "load.json")])
    level = out["levels"][0]
    assert level["admitted"] == 5 and level["refused"] == 0 and not level["errors"]
    assert level["answered"] == 5 and level["dropped"] == 0
    assert level["stages_p50_ms"]["first_audio_sent"] is not None  # the server's metrics reached the client
