"""Voices are catalog ids, never paths (issue 8): the TTS service alone with the real Piper model.

The service runs with an operator voices folder holding "slow" (joe's model with a
length_scale of 2, so its speech is audibly longer) and an agents file whose "sloth"
agent speaks with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from services.tts.engines.piper import bundled_voice_path
from shared.audio import OUT_RATE, f32le_to_float
from tests.conftest import ROOT, wait_ready

pytestmark = pytest.mark.e2e
PORT = int(os.environ.get("TEST_BASE_PORT", "18000")) + 44  # not the `system` fixture's TTS port
URL = f"http://127.0.0.1:{PORT}"
WS = f"ws://127.0.0.1:{PORT}/tts/stream"
TEXT = "The quick brown fox jumps over the lazy dog."


def start_tts(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The TTS service alone under uvicorn (shared/serve.py, as the launcher runs it), ready to serve."""
    env = {**os.environ, "TTS_HOST": "127.0.0.1", "TTS_PORT": str(port), "TTS_CARTESIA_API_KEY": "", "TTS_ELEVENLABS_API_KEY": "", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shared.serve", "tts"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 60, proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def stop_tts(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def tts(tmp_path_factory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("tts-voices")
    voices = tmp / "voices"
    voices.mkdir()
    joe = Path(bundled_voice_path())
    (voices / "slow.onnx").symlink_to(joe)
    meta = json.loads(Path(f"{joe}.json").read_text())
    meta["inference"]["length_scale"] = 2.0
    (voices / "slow.onnx.json").write_text(json.dumps(meta))
    (voices / "bad id!.onnx").symlink_to(joe)  # not a valid id: skipped, never listed
    agents = tmp / "agents.json"
    agents.write_text(json.dumps({"default": "a", "agents": [
        {"id": "sloth", "name": "Slow Sam", "voice": "slow"},
        {"id": "ghost", "name": "Ghost", "voice": "no-such-voice"},
    ]}))
    env = {"TTS_VOICES_DIR": str(voices), "TTS_AGENTS_FILE": str(agents), "TTS_DATA_DIR": str(tmp / "data")}
    proc = start_tts(PORT, env, tmp / "tts.log")
    try:
        yield voices
    finally:
        stop_tts(proc)


async def speak(msg: dict, url: str = WS) -> tuple[np.ndarray, dict]:
    """Audio and the closing message (end or error) of one request."""
    parts = []
    async with websockets.connect(url, max_size=2**24) as ws:
        await ws.send(json.dumps(msg))
        while isinstance(frame := await ws.recv(), bytes):
            parts.append(f32le_to_float(frame))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), json.loads(frame)


def test_catalog_lists_bundled_and_operator_voices(tts):
    r = httpx.get(f"{URL}/voices", timeout=10)
    assert r.status_code == 200
    voices = {v["id"]: v for v in r.json()}
    assert set(voices) == {"default", "joe", "slow"}
    assert voices["joe"] == {"id": "joe", "name": "en_US-joe-medium", "engine": "piper", "language": "en_US",
                             "sample_rate": 22050, "cloned": False}
    assert voices["default"]["alias_of"] == "joe"
    assert httpx.get(f"{URL}/v1/voices/joe", timeout=10).json()["engine"] == "piper"
    assert httpx.get(f"{URL}/v1/voices/nope", timeout=10).status_code == 404


@pytest.mark.parametrize("voice", [None, "joe", "default", "slow"])
async def test_speak_by_id(tts, voice):
    msg = {"type": "speak", "text": TEXT, "id": "1"} | ({"voice": voice} if voice else {})
    audio, end = await speak(msg)
    assert end == {"type": "end", "id": "1", "samples": len(audio), "sample_rate": OUT_RATE}
    assert len(audio) / OUT_RATE > 1.0 and 0.05 < np.abs(audio).max() <= 1.0


async def test_unknown_and_path_like_ids_get_the_same_answer(tts):
    existing = [bundled_voice_path(), str(tts / "slow.onnx"), "en_US-joe-medium.onnx", "joe.onnx"]
    missing = ["nope", "../x.onnx", "/etc/passwd", "/tmp/none.onnx", "bad id!", "..", "a" * 65, "default/../joe"]
    bodies = set()
    for voice in existing + missing:
        masked = voice if len(voice) <= 64 else voice[:64] + "..."
        _, err = await speak({"text": "Hi.", "voice": voice, "id": "7"})
        assert err["type"] == "error" and err["id"] == "7"
        bodies.add(json.dumps(err).replace(json.dumps(masked)[1:-1], "X"))
        async with httpx.AsyncClient(base_url=URL, timeout=10) as http:
            answers = [await http.post("/tts", json={"text": "Hi.", "voice": voice}), await http.get("/tts", params={"text": "Hi.", "voice": voice})]
        for r in answers:
            assert r.status_code == 400
            bodies.add(r.text.replace(json.dumps(masked)[1:-1], "X"))
    assert bodies == {
        '{"type": "error", "id": "7", "message": "unknown voice id \'X\'; GET /voices lists them"}',
        '{"error":"unknown voice id \'X\'; GET /voices lists them","retryable":false}',
    }


async def test_personality_selects_the_agents_voice(tts):
    base, _ = await speak({"text": TEXT})
    for personality in ("sloth", "Slow Sam", "SLOTH"):
        slow, end = await speak({"text": TEXT, "personality": personality})
        assert end["type"] == "end" and len(slow) > 1.6 * len(base), personality
    for personality in ("nobody", "ghost"):  # unknown, or an agent whose voice is not in the catalog: default
        audio, end = await speak({"text": TEXT, "personality": personality})
        assert end["type"] == "end" and 0.75 < len(audio) / len(base) < 1.33, personality
    audio, _ = await speak({"text": TEXT, "personality": "sloth", "voice": "joe"})  # an explicit voice wins
    assert len(audio) < 1.33 * len(base)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{URL}/tts", json={"text": TEXT, "personality": "sloth"})
    assert r.status_code == 200 and len(r.content) > 1.6 * 2 * len(base)


async def test_bad_fields_are_errors_with_a_reason(tts):
    async with websockets.connect(WS) as ws:
        for msg, words in (({"text": ""}, "text"), ({"text": "x" * 2001}, "text"), ({"text": "Hi", "personality": "p" * 200}, "personality"),
                           ({"text": "Hi", "id": "i" * 200}, "id"), ({"type": "dance"}, "bad message")):
            await ws.send(json.dumps(msg))
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and words in err["message"], err
        await ws.send(json.dumps({"text": "Still here.", "id": "ok"}))
        while isinstance(frame := await ws.recv(), bytes):
            pass
        assert json.loads(frame) == {"type": "end", "id": "ok", "samples": json.loads(frame)["samples"], "sample_rate": OUT_RATE}
