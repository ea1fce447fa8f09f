"""The engines one TTS service holds: its default engine (TTS_ENGINE) and the cloud
providers vocal.fun's clients name in the path (/tts/stream/cartesia, /tts/elevenlabs),
plus the voice catalog over all of them."""

from __future__ import annotations

import importlib
import logging
import os

from services.tts.engines.base import TtsEngine
from services.tts.gate import SynthesisGate
from services.tts.voices import VoiceCatalog
from shared.config import TtsSettings
from shared.service import Readiness, ServiceError

log = logging.getLogger("tts")
# Imported lazily: cloud and GPU engines need packages the default path lacks.
ENGINES = {
    "piper": "services.tts.engines.piper:PiperEngine",
    "xtts": "services.tts.engines.xtts:XttsEngine",
    "cartesia": "services.tts.engines.cartesia:CartesiaEngine",
    "elevenlabs": "services.tts.engines.elevenlabs:ElevenLabsEngine",
}
PROVIDERS = ("cartesia", "elevenlabs")  # always present, usable once their keys are set


def make_engine(name: str, cfg: TtsSettings) -> TtsEngine:
    module, cls = ENGINES[name].split(":")
    engine: TtsEngine = getattr(importlib.import_module(module), cls)(cfg)
    return engine


class TtsContext:
    """What the routes share: settings, engines, the catalog and readiness."""

    def __init__(self, cfg: TtsSettings, engines: dict[str, TtsEngine] | None = None, default: str | None = None) -> None:
        self.cfg = cfg
        self.default = default or cfg.engine
        self.engines = engines if engines is not None else {n: make_engine(n, cfg) for n in {cfg.engine, *PROVIDERS}}
        self.unavailable: dict[str, str] = {}  # engine name -> why it cannot speak
        self.catalog = VoiceCatalog(self.engines, self.default, cfg.data_dir, cfg.agents_file)
        self.state = Readiness()
        self.gate = SynthesisGate(cfg.max_concurrent or (os.cpu_count() or 1) // cfg.threads)

    async def load(self) -> None:
        """The default engine must load (else the service is not ready); a provider
        without credentials only makes its own routes answer with the reason."""
        await self.engines[self.default].load()
        for name, engine in self.engines.items():
            if name == self.default:
                continue
            try:
                await engine.load()
            except Exception as exc:  # noqa: BLE001 - recorded and answered on that provider's routes
                self.unavailable[name] = f"{name} is not available: {exc}"
                log.info("%s", self.unavailable[name])

    def engine(self, name: str) -> TtsEngine:
        if name in self.unavailable:
            raise ServiceError(503, self.unavailable[name])
        if name not in self.engines:
            raise ServiceError(404, f"unknown TTS engine {name!r}")
        return self.engines[name]

    def pick(self, voice: str | None, personality: str | None, route: str | None) -> tuple[TtsEngine, str | None]:
        """The engine and voice id for one request on a route (None: the default route)."""
        if route is not None:
            self.engine(route)  # an unconfigured provider says so before any voice question
        name, voice_id = self.catalog.resolve(voice, personality, route)
        return self.engine(name), voice_id
