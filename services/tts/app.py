"""TTS service (:8003), run by uvicorn as services.tts.app:app. Routes: services/tts/service.py."""

from __future__ import annotations

from services.tts.registry import TtsContext
from services.tts.service import create_app
from shared.config import TtsSettings
from shared.logs import setup_logging

log = setup_logging("tts")
cfg = TtsSettings()
app = create_app(TtsContext(cfg))
