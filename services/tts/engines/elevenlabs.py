"""ElevenLabs streaming TTS over its input-streaming WebSocket (needs TTS_ELEVENLABS_API_KEY and a voice id)."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator

import numpy as np
import websockets

from services.tts.engines.base import TtsEngine
from shared.audio import OUT_RATE, pcm16_to_float
from shared.config import TtsSettings
from shared.protocol import VOICE_ID_PATTERN, VoiceInfo
from shared.service import ServiceError

log = logging.getLogger("tts")

MODEL = "eleven_flash_v2_5"


class ElevenLabsEngine(TtsEngine):
    name = "elevenlabs"
    local = False  # the provider synthesizes: nothing to gate here
    sample_rate = OUT_RATE  # output_format=pcm_24000: 16-bit PCM at 24 kHz

    def __init__(self, cfg: TtsSettings) -> None:
        self.cfg = cfg
        self.key = cfg.elevenlabs_api_key.get_secret_value()

    def voices(self) -> list[VoiceInfo]:
        """The configured voice id (the catalog's only ElevenLabs voice), once the key is set."""
        vid = self.cfg.elevenlabs_voice_id
        if not self.key or not re.fullmatch(VOICE_ID_PATTERN, vid):
            return []
        return [VoiceInfo(id=vid, name=f"ElevenLabs {vid}", engine=self.name, language="en", sample_rate=OUT_RATE)]

    async def load(self) -> None:
        if not self.key or not self.cfg.elevenlabs_voice_id:
            raise RuntimeError("ElevenLabs needs TTS_ELEVENLABS_API_KEY and TTS_ELEVENLABS_VOICE_ID")

    async def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        voice_id = voice or self.cfg.elevenlabs_voice_id
        url = f"{self.cfg.elevenlabs_url}/v1/text-to-speech/{voice_id}/stream-input?model_id={MODEL}&output_format=pcm_24000"
        try:
            async with websockets.connect(url, open_timeout=5) as ws:
                await ws.send(json.dumps({"text": " ", "xi_api_key": self.key}))
                await ws.send(json.dumps({"text": text + " ", "flush": True}))
                await ws.send(json.dumps({"text": ""}))  # end of input
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("error") or msg.get("message") and not msg.get("audio"):
                        log.warning("ElevenLabs reported an error: %s", msg.get("error") or msg.get("message"))
                        raise ServiceError(502, "ElevenLabs reported an error", retryable=True)
                    if msg.get("audio"):
                        yield pcm16_to_float(base64.b64decode(msg["audio"]))
                    if msg.get("isFinal"):
                        return
        except (OSError, websockets.WebSocketException) as exc:
            raise ServiceError(503, f"ElevenLabs unreachable: {type(exc).__name__}", retryable=True) from exc
