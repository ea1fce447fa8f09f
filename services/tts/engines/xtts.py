"""Coqui XTTS-v2 on a GPU, with DeepSpeed when installed (packages from requirements-gpu.txt).

Weights come from TTS_XTTS_MODEL_PATH (a local XTTS-v2 checkout: config.json, model.pth,
vocab.json); nothing is downloaded. The voice is cloned from TTS_XTTS_SPEAKER_WAV.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np

from services.tts.engines.base import TtsEngine
from shared.aio import iterate_in_thread
from shared.config import TtsSettings
from shared.service import MissingDependency


class XttsEngine(TtsEngine):
    sample_rate = 24_000

    def __init__(self, cfg: TtsSettings) -> None:
        self.cfg = cfg
        self.model = None
        self.latents: tuple = ()

    def _load(self) -> None:
        try:
            import torch
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts
        except ImportError as exc:
            raise MissingDependency("coqui-tts", "the XTTS-v2 engine") from exc
        root = Path(self.cfg.xtts_model_path)
        if not (root / "config.json").exists():
            raise RuntimeError(f"TTS_XTTS_MODEL_PATH={root} has no XTTS-v2 config.json")
        config = XttsConfig()
        config.load_json(str(root / "config.json"))
        model = Xtts.init_from_config(config)
        try:
            import deepspeed  # noqa: F401

            use_deepspeed = torch.cuda.is_available()
        except ImportError:
            use_deepspeed = False
        model.load_checkpoint(config, checkpoint_dir=str(root), use_deepspeed=use_deepspeed)
        if torch.cuda.is_available():
            model.cuda()
        self.model = model
        self.latents = model.get_conditioning_latents(audio_path=[self.cfg.xtts_speaker_wav])

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _blocking(self, text: str) -> Iterator[np.ndarray]:
        assert self.model is not None
        gpt_latent, speaker_embedding = self.latents
        for chunk in self.model.inference_stream(text, "en", gpt_latent, speaker_embedding, enable_text_splitting=False):
            yield chunk.float().cpu().numpy().reshape(-1)

    def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        return iterate_in_thread(lambda: self._blocking(text))
