"""Smart Turn v3.2: does the speech so far sound like the end of a turn? (audio, not words)

An 8 MB ONNX model (BSD-2) shipped inside the `pipecat-ai` wheel, which we install with
--no-deps for this one file, run with ONNX Runtime. Its input is Whisper's 80-bin log-mel
spectrogram of the last 8 s (zero-padded at the front), computed here by faster-whisper's
own FeatureExtractor (the same numbers as pipecat's vendored copy, within 1e-5), after
pipecat's zero-mean, unit-variance normalisation of the waveform. No torch.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from shared.audio import STT_RATE

log = logging.getLogger("stt.turn_model")

WINDOW = 8 * STT_RATE  # the model hears the last 8 s


def model_path() -> Path:
    spec = find_spec("pipecat")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "audio" / "turn" / "smart_turn" / "data" / "smart-turn-v3.2-cpu.onnx"
        if path.is_file():
            return path
    raise RuntimeError("Smart Turn model not found: pip install --no-deps pipecat-ai (scripts/setup.sh does)")


class SmartTurn:
    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session: Any = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        self.features = FeatureExtractor(feature_size=80, chunk_length=8)
        self.probability(np.zeros(STT_RATE, np.float32))  # warm-up

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is complete) for 16 kHz float32 speech ending now."""
        x = np.asarray(audio, np.float32)[-WINDOW:]
        x = np.pad(x, (WINDOW - len(x), 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self.features(x, padding=0)[:, :800].astype(np.float32)
        out = self.session.run(None, {"input_features": mel[None]})
        return float(np.asarray(out[0]).reshape(-1)[0])
