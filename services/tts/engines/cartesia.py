"""Cartesia streaming TTS over its WebSocket API (needs TTS_CARTESIA_API_KEY and a voice id)."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator

import numpy as np
import websockets

from services.tts.engines.base import TtsEngine
from shared.audio import OUT_RATE
from shared.config import TtsSettings
from shared.protocol import VOICE_ID_PATTERN, VoiceInfo
from shared.service import ServiceError

log = logging.getLogger("tts")

API_VERSION = "2024-06-10"


class CartesiaEngine(TtsEngine):
    name = "cartesia"
    local = False  # the provider synthesizes: nothing to gate here
    sample_rate = OUT_RATE  # we ask for 24 kHz float32, so no resampling is needed

    def __init__(self, cfg: TtsSettings) -> None:
        self.cfg = cfg
        self.key = cfg.cartesia_api_key.get_secret_value()

    def voices(self) -> list[VoiceInfo]:
        """The configured voice id (the catalog's only Cartesia voice), once the key is set."""
        vid = self.cfg.cartesia_voice_id
        if not self.key or not re.fullmatch(VOICE_ID_PATTERN, vid):
            return []
        return [VoiceInfo(id=vid, name=f"Cartesia {vid}", engine=self.name, language="en", sample_rate=OUT_RATE)]

    async def load(self) -> None:
        if not self.key or not self.cfg.cartesia_voice_id:
            raise RuntimeError("Cartesia needs TTS_CARTESIA_API_KEY and TTS_CARTESIA_VOICE_ID")

    async def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        url = f"{self.cfg.cartesia_url}?api_key={self.key}&cartesia_version={API_VERSION}"
        request = {
            "model_id": "sonic-english",
            "transcript": text,
            "voice": {"mode": "id", "id": voice or self.cfg.cartesia_voice_id},
            "output_format": {"container": "raw", "encoding": "pcm_f32le", "sample_rate": OUT_RATE},
            "context_id": uuid.uuid4().hex,
        }
        try:
            async with websockets.connect(url, open_timeout=5) as ws:
                await ws.send(json.dumps(request))
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") == "chunk":
                        yield np.frombuffer(base64.b64decode(msg["data"]), "<f4").astype(np.float32)
                    elif msg.get("type") == "error":
                        log.warning("Cartesia reported an error: %s", msg.get("error"))  # its text is for the log only
                        raise ServiceError(502, "Cartesia reported an error", retryable=True)
                    if msg.get("done"):
                        return
        except (OSError, websockets.WebSocketException) as exc:
            raise ServiceError(503, f"Cartesia unreachable: {type(exc).__name__}", retryable=True) from exc
