"""Silero VAD as a hop classifier: the neural option behind the same interface as
the energy detector.

Energy against a noise floor is cheap and exact on clean input but cannot tell
speech from loud non-stationary noise (babble, music, keyboard). Silero's small
recurrent network can; `AudioSpeechDetector(cfg, SileroClassifier())` keeps the
same state machine, events and knobs. The ONNX file ships in the `silero-vad`
package (installed with --no-deps: torch is not needed) and runs on onnxruntime.
"""

from __future__ import annotations

import threading
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from shared.audio import STT_RATE

_CONTEXT = 64  # samples of the previous window the model expects in front of each hop (16 kHz)
_session = None
_lock = threading.Lock()


def model_path() -> Path:
    spec = find_spec("silero_vad")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise RuntimeError(
            "Silero VAD model not found: install the `silero-vad` package "
            "(pip install --no-deps silero-vad; it ships silero_vad.onnx, torch is not needed)"
        )
    return path


def _get_session():
    """One ONNX Runtime session per process (run() is thread-safe); state is per classifier."""
    global _session
    with _lock:
        if _session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            _session = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        return _session


class SileroClassifier:
    """Speech probability per 32 ms hop; start above `start_threshold`, continue above `continue_threshold`."""

    hop = 512  # the window Silero v5/v6 is trained on at 16 kHz

    def __init__(self, start_threshold: float = 0.5, continue_threshold: float = 0.35) -> None:
        self.start_threshold = start_threshold
        self.continue_threshold = continue_threshold
        self.session = _get_session()
        self._sr = np.array(STT_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)
        self.prob = 0.0

    def probability(self, hop: np.ndarray) -> float:
        x = np.concatenate([self._context, np.asarray(hop, np.float32)])[None, :]
        out, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[0, -_CONTEXT:]
        self.prob = float(out[0, 0])
        return self.prob

    def score(self, hop: np.ndarray, in_speech: bool) -> tuple[bool, bool]:
        p = self.probability(hop)
        return p > self.start_threshold, p > self.continue_threshold
