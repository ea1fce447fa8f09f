"""Cloud TTS engines against fakes that speak the providers' WebSocket protocols."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import websockets
from pydantic import SecretStr

from services.tts.engines.cartesia import CartesiaEngine
from services.tts.engines.elevenlabs import ElevenLabsEngine
from shared.config import TtsSettings
from shared.service import ServiceError

TONE = (0.3 * np.sin(2 * np.pi * 300 * np.arange(24000) / 24000)).astype(np.float32)


async def fake_cartesia(ws):
    query = parse_qs(urlparse(ws.request.path).query)
    req = json.loads(await ws.recv())
    if query.get("api_key") != ["k"] or req["output_format"]["encoding"] != "pcm_f32le" or not req["transcript"]:
        await ws.send(json.dumps({"type": "error", "error": "bad request", "done": True}))
        return
    for part in np.array_split(TONE, 5):
        await ws.send(json.dumps({"type": "chunk", "data": base64.b64encode(part.astype("<f4").tobytes()).decode(), "done": False}))
    await ws.send(json.dumps({"type": "done", "done": True}))


async def fake_elevenlabs(ws):
    first = json.loads(await ws.recv())
    text = json.loads(await ws.recv())["text"]
    assert json.loads(await ws.recv()) == {"text": ""}
    if first.get("xi_api_key") != "k" or "pcm_24000" not in ws.request.path:
        await ws.send(json.dumps({"message": "unauthorized"}))
        return
    pcm = (TONE * 32767).astype("<i2").tobytes()
    for i in range(0, len(pcm), 9600):
        await ws.send(json.dumps({"audio": base64.b64encode(pcm[i : i + 9600]).decode(), "isFinal": False}))
    await ws.send(json.dumps({"isFinal": True, "text": text}))


@pytest.fixture
async def servers():
    async with websockets.serve(fake_cartesia, "127.0.0.1", 0) as c, websockets.serve(fake_elevenlabs, "127.0.0.1", 0) as e:
        yield f"ws://127.0.0.1:{c.sockets[0].getsockname()[1]}", f"ws://127.0.0.1:{e.sockets[0].getsockname()[1]}"


def engines(cart_url: str, el_url: str, key: str):
    cfg = TtsSettings(cartesia_api_key=SecretStr(key), cartesia_voice_id="v", cartesia_url=cart_url,
                      elevenlabs_api_key=SecretStr(key), elevenlabs_voice_id="v", elevenlabs_url=el_url)
    return CartesiaEngine(cfg), ElevenLabsEngine(cfg)


async def test_cloud_engines_stream_24k_chunks(servers):
    for engine in engines(*servers, key="k"):
        await engine.load()
        chunks = [c async for c in engine.stream("Hello there.", None, chunk_ms=80)]
        audio = np.concatenate(chunks)
        assert max(len(c) for c in chunks) <= 1920
        assert len(audio) == len(TONE) and np.allclose(audio, TONE, atol=1e-3)


async def test_cloud_errors_are_clear(servers, caplog):
    """The provider's own words go to the log, for the operator; the caller gets ours."""
    for engine in engines(*servers, key="wrong"):
        caplog.clear()
        with pytest.raises(ServiceError) as err:
            [c async for c in engine.stream("Hello.", None, chunk_ms=80)]
        assert err.value.status == 502 and err.value.message.endswith("reported an error")
        assert "bad request" not in err.value.message and "unauthorized" not in err.value.message
        assert "bad request" in caplog.text or "unauthorized" in caplog.text
    for engine in engines("ws://127.0.0.1:9", "ws://127.0.0.1:9", key="k"):
        with pytest.raises(ServiceError) as err:
            [c async for c in engine.stream("Hello.", None, chunk_ms=80)]
        assert err.value.status == 503 and "unreachable" in err.value.message


async def test_cloud_engines_need_credentials():
    for engine in engines("ws://x", "ws://x", key=""):
        with pytest.raises(RuntimeError, match="API_KEY"):
            await engine.load()
