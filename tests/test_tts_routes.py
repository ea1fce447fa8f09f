"""vocal.fun's TTS routes and the voice-cloning API.

The TTS service runs alone with the real Piper model as its default engine, Cartesia
pointed at the fake of its WebSocket protocol (tests/test_cloud_tts.py) and ElevenLabs
without a key. The cloning success path runs in process over a fake cloning engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from fastapi.testclient import TestClient

from services.tts.engines.base import TtsEngine
from services.tts.registry import TtsContext
from services.tts.service import create_app
from shared.audio import OUT_RATE, STT_RATE, f32le_to_float, wav_bytes
from shared.config import TtsSettings
from shared.protocol import VoiceInfo
from tests.test_cloud_tts import TONE, fake_cartesia, fake_elevenlabs
from tests.test_tts_voices import start_tts, stop_tts

PORT = int(os.environ.get("TEST_BASE_PORT", "18000")) + 45
URL = f"http://127.0.0.1:{PORT}"
WS = f"ws://127.0.0.1:{PORT}"
MAX_BYTES = 1_500_000


class FakeProviders:
    """The fake Cartesia and ElevenLabs servers on their own event loop (the TTS process connects to them)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.urls: dict[str, str] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _serve(self) -> None:
        self.servers = [await websockets.serve(fake_cartesia, "127.0.0.1", 0), await websockets.serve(fake_elevenlabs, "127.0.0.1", 0)]
        for name, s in zip(("cartesia", "elevenlabs"), self.servers, strict=True):
            self.urls[name] = f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}"

    def __enter__(self) -> FakeProviders:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self

    async def _close(self) -> None:
        for s in self.servers:
            s.close()
            await s.wait_closed()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def tts(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("tts-routes")
    with FakeProviders() as fakes:
        env = {"TTS_CARTESIA_API_KEY": "k", "TTS_CARTESIA_VOICE_ID": "v", "TTS_CARTESIA_URL": fakes.urls["cartesia"],
               "TTS_DATA_DIR": str(tmp / "data"), "TTS_CLONE_MAX_BYTES": str(MAX_BYTES)}
        proc = start_tts(PORT, env, tmp / "tts.log")
        try:
            yield URL
        finally:
            stop_tts(proc)


async def stream(path: str, msgs: list[dict]) -> tuple[np.ndarray, list[dict]]:
    parts, control = [], []
    async with websockets.connect(WS + path, max_size=2**24) as ws:
        for m in msgs:
            await ws.send(json.dumps(m))
        while len(control) < len(msgs):
            frame = await ws.recv()
            if isinstance(frame, bytes):
                parts.append(f32le_to_float(frame))
            else:
                control.append(json.loads(frame))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), control


def decode_wav(data: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == OUT_RATE
    return audio


# ------------------------------------------------------------------ WAV over GET


def test_get_tts_returns_a_wav(tts):
    r = httpx.get(f"{tts}/tts", params={"text": "Hello there.", "voice": "joe"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert len(decode_wav(r.content)) > 0.4 * OUT_RATE
    assert httpx.get(f"{tts}/tts", timeout=10).status_code == 422  # text missing
    assert httpx.get(f"{tts}/tts", params={"text": "x" * 2001}, timeout=10).status_code == 422


def test_get_tts_provider_routes(tts):
    r = httpx.get(f"{tts}/tts/cartesia", params={"text": "Hello there."}, timeout=30)
    assert r.status_code == 200
    assert np.allclose(decode_wav(r.content), TONE, atol=1e-3)
    r = httpx.get(f"{tts}/tts/elevenlabs", params={"text": "Hello there."}, timeout=10)
    assert r.status_code == 503 and "TTS_ELEVENLABS_API_KEY" in r.json()["error"]
    assert httpx.get(f"{tts}/tts/nosuch", params={"text": "Hi"}, timeout=10).status_code == 422


# ------------------------------------------------------------------ streams


async def test_stream_provider_named_in_the_path(tts):
    audio, control = await stream("/tts/stream/cartesia", [{"text": "Hello there.", "id": "a"}, {"text": "Again.", "voice": "v", "id": "b"}])
    assert [c["type"] for c in control] == ["end", "end"]
    assert len(audio) == 2 * len(TONE) and np.allclose(audio[: len(TONE)], TONE, atol=1e-3)
    _, control = await stream("/tts/stream/cartesia", [{"text": "Hi.", "voice": "joe"}])
    assert control[0]["type"] == "error" and "piper voice" in control[0]["message"]


async def test_default_route_speaks_with_the_voices_engine(tts):
    cart, control = await stream("/tts/stream", [{"text": "Hello.", "voice": "v"}])  # Cartesia's catalog voice
    assert control[0]["type"] == "end" and np.allclose(cart, TONE, atol=1e-3)
    piper, control = await stream("/tts/stream", [{"text": "Hello."}])
    assert control[0]["type"] == "end" and len(piper) != len(TONE)
    async with httpx.AsyncClient(timeout=10) as http:
        voices = {v["id"]: v["engine"] for v in (await http.get(f"{tts}/voices")).json()}
    assert voices == {"default": "piper", "joe": "piper", "v": "cartesia"}


async def test_provider_without_key_says_so_and_closes(tts):
    async with websockets.connect(WS + "/tts/stream/elevenlabs") as ws:
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and "TTS_ELEVENLABS_API_KEY" in err["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1011 and "elevenlabs" in closed.value.rcvd.reason


def test_metrics(tts):
    text = httpx.get(f"{tts}/metrics", timeout=10).text
    for name in ("s2s_tts_first_audio_seconds_bucket", "s2s_tts_synthesis_seconds_count", "s2s_tts_active_streams", "s2s_tts_queue_depth"):
        assert name in text
    assert 's2s_tts_first_audio_seconds_count{engine="cartesia"}' in text


# ------------------------------------------------------------------ cloning on Piper: validated, then 501


def ref_wav(seconds: float) -> bytes:
    t = np.arange(int(seconds * STT_RATE)) / STT_RATE
    return wav_bytes((0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32), STT_RATE)


def clone(url: str, data: bytes, **fields: str) -> httpx.Response:
    form = {"name": "Me", "consent": "true"} | fields
    return httpx.post(f"{url}/v1/voices", files={"file": ("ref.wav", data)}, data={k: v for k, v in form.items() if v}, timeout=30)


def test_clone_validation_then_not_implemented_on_piper(tts):
    r = clone(tts, ref_wav(5))
    assert r.status_code == 501 and "cannot clone" in r.json()["error"]
    for consent in ("", "false", "no"):
        r = clone(tts, ref_wav(5), consent=consent)
        assert r.status_code == 400 and "consent" in r.json()["error"]
    r = clone(tts, b"RIFF this is not audio at all" * 100)
    assert r.status_code == 400 and "not audio" in r.json()["error"]
    for seconds in (1.5, 31):
        r = clone(tts, ref_wav(seconds))
        assert r.status_code == 400 and "3-30 s" in r.json()["error"]
    flac = io.BytesIO()
    sf.write(flac, np.zeros(600 * 8000, np.int16), 8000, format="FLAC")  # 10 minutes in a few kB: refused undecoded
    r = clone(tts, flac.getvalue())
    assert r.status_code == 400 and "600.0 s" in r.json()["error"]
    r = clone(tts, wav_bytes(np.zeros(5 * STT_RATE, np.float32), STT_RATE))
    assert r.status_code == 400 and "silent" in r.json()["error"]
    assert clone(tts, ref_wav(5), name="").status_code == 400
    assert clone(tts, ref_wav(5), name="n" * 65).status_code == 400
    r = clone(tts, ref_wav(5), path="/etc/passwd")
    assert r.status_code == 400 and "unexpected field 'path'" in r.json()["error"]
    r = httpx.post(f"{tts}/v1/voices", json={"file": "/etc/passwd"}, timeout=10)
    assert r.status_code == 400 and "multipart" in r.json()["error"]


def _raw(head: bytes, body_parts: list[bytes] = ()) -> int:  # type: ignore[assignment]
    """Send a hand-written request, return the response status."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:  # the server may answer 413 and close before reading everything
                break
        return int(s.recv(65536).split(b" ", 2)[1])


def test_clone_oversize_is_413_before_reading(tts):
    boundary = b"b0undary"
    head = (b"POST /v1/voices HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary + b"\r\n")
    assert _raw(head + b"Content-Length: 1000000000\r\n\r\n") == 413  # declared too large: no body needed
    # No Content-Length (chunked): the counted read stops at the limit.
    chunk = b"0" * 65536
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BYTES // len(chunk) + 4)
    assert _raw(head + b"Transfer-Encoding: chunked\r\n\r\n", parts) == 413
    # A Content-Length that understates the body: only that much is read, which is not a valid form.
    assert _raw(head + b"Content-Length: 100\r\n\r\n", [b"x" * 200_000]) == 400
    assert httpx.get(f"{tts}/health", timeout=5).status_code == 200


# ------------------------------------------------------------------ cloning end to end over a fake cloning engine


class FakeCloner(TtsEngine):
    """Clones by remembering a tone frequency per voice (from the reference's length)."""

    name = "fake"
    can_clone = True

    def __init__(self) -> None:
        self.conditioning: dict[str, float] = {}

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id="base", name="Base", engine="fake", language="en", sample_rate=OUT_RATE)]

    def add_voice(self, voice_id: str, audio16k: np.ndarray, transcript: str | None) -> None:
        self.conditioning[voice_id] = 100 + len(audio16k) / STT_RATE * 10

    def remove_voice(self, voice_id: str) -> None:
        self.conditioning.pop(voice_id, None)

    async def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        hz = self.conditioning.get(voice or "base", 440.0)
        yield (0.2 * np.sin(2 * np.pi * hz * np.arange(OUT_RATE // 10) / OUT_RATE)).astype(np.float32)


def test_clone_create_use_delete(tmp_path):
    cfg = TtsSettings(data_dir=str(tmp_path / "data"), agents_file=str(tmp_path / "none.json"), clone_max_voices=2)
    engine = FakeCloner()
    with TestClient(create_app(TtsContext(cfg, {"fake": engine}, "fake"))) as client:
        r = client.post("/v1/voices", files={"file": ("x.bin", ref_wav(4))}, data={"name": "Ann", "consent": "true", "transcript": "hello"})
        assert r.status_code == 201, r.text
        entry = r.json()
        vid = entry["id"]
        assert entry["cloned"] and entry["name"] == "Ann" and entry["engine"] == "fake" and entry["duration"] == 4.0
        assert vid in engine.conditioning and client.get(f"/v1/voices/{vid}").json()["id"] == vid
        assert vid in {v["id"] for v in client.get("/voices").json()}
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [f"{vid}.json"]
        with client.websocket_connect("/tts/stream") as ws:
            ws.send_json({"text": "Hi", "voice": vid})
            samples = 0
            while "bytes" in (msg := ws.receive()):
                samples += len(f32le_to_float(msg["bytes"]))
            assert samples == OUT_RATE // 10 and json.loads(msg["text"]) == {"type": "end", "samples": samples, "sample_rate": OUT_RATE}
        r = client.get("/tts", params={"text": "Hi", "voice": vid})
        assert r.status_code == 200
        second = client.post("/v1/voices", files={"file": ("x", ref_wav(3))}, data={"name": "Bo", "consent": "1"})
        assert second.status_code == 201
        r = client.post("/v1/voices", files={"file": ("x", ref_wav(3))}, data={"name": "Cy", "consent": "1"})
        assert r.status_code == 409  # clone_max_voices=2
        assert client.delete("/v1/voices/base").status_code == 403
        assert client.delete(f"/v1/voices/{vid}").json() == {"deleted": vid}
        assert client.get(f"/v1/voices/{vid}").status_code == 404 and vid not in engine.conditioning
        assert client.delete(f"/v1/voices/{vid}").status_code == 404
        assert client.post("/tts", json={"text": "Hi", "voice": vid}).status_code == 400
    # A restart reads the catalog back from the data dir.
    ctx = TtsContext(cfg, {"fake": FakeCloner()}, "fake")
    assert second.json()["id"] in ctx.catalog.entries and vid not in ctx.catalog.entries
