"""A learned end-of-turn decision: a logistic model over the cues a session has at a pause.

    p = sigmoid(bias + sum_i weight_i * (x_i - mean_i) / scale_i)

where x is `vector(cues, silence_ms)`: the one definition of the features, used by the
benchmark that fits the weights (bench/eot.py) and by the session's turn-taker when
SERVER_END_OF_TURN_POLICY=learned (docs/turn-taking.md has both curves):

    lm_logit        logit of the chat engine's P(sentence ends here) for the transcript so far
    sound_logit     logit of Smart Turn v3.2's P(finished), read once at the pause
    sentence_end_logit  logit of Whisper's P(". ? !" right after the last word), from the STT's decode
    reads_complete  1 if endpointing.reads_complete(transcript) (full stop, no trailing "and")
    punctuated      1 if the transcript ends in . ! or ?
    silence_s       seconds of silence so far (since the last voiced 10 ms)
    log_silence     log(silence_s), floored at 50 ms
    speaking_rate   words of the transcript per second of the turn so far (onset to pause), at most 8
    log_words       log(1 + words of the transcript)

Probabilities are clipped to [1e-4, 1 - 1e-4] before the logit. A cue that is missing (None:
no language-model reading, no Smart Turn, no Whisper reading) takes its training mean, i.e. it contributes nothing.
The weights, the standardisation and the operating point (threshold, action delay, timeout)
come from `eot_weights.json` beside this file, written by `python bench/eot.py --fit` from the
training speakers only. The turn ends at the first moment of silence that is at least the
action delay and at which p >= threshold, or at the timeout whatever p says.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.server.endpointing import reads_complete

WEIGHTS = Path(__file__).with_name("eot_weights.json")
FEATURES = ("lm_logit", "sound_logit", "sentence_end_logit", "reads_complete", "punctuated", "silence_s", "log_silence", "speaking_rate", "log_words")
_EPS = 1e-4
MAX_RATE = 8.0  # words/s: the fitted data reach 6.7; a mismeasured short turn must not read as a sprint


@dataclass(frozen=True)
class EotCues:
    """What a session knows at a pause, apart from how long the silence has lasted."""

    transcript: str | None  # the words so far (None: no transcript yet)
    lm: float | None  # chat engine P(end of turn) for that transcript
    sound: float | None  # Smart Turn P(finished) on the audio up to the pause
    speech_s: float  # seconds from the turn's speech onset to the pause
    sentence_end: float | None = None  # Whisper's P(the words end a sentence)


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def word_count(text: str | None) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text or ""))


def vector(cues: EotCues, silence_ms: float) -> list[float | None]:
    """The features, in FEATURES order; None where a cue is missing (`EndOfTurnModel` fills it)."""
    text = (cues.transcript or "").strip()
    words = word_count(text)
    silence = max(silence_ms, 0.0) / 1000
    return [
        None if cues.lm is None else logit(cues.lm),
        None if cues.sound is None else logit(cues.sound),
        None if cues.sentence_end is None else logit(cues.sentence_end),
        float(reads_complete(text)),
        float(text.rstrip("\"')]").endswith((".", "!", "?"))),
        silence,
        math.log(max(silence, 0.05)),
        min(words / max(cues.speech_s, 0.25), MAX_RATE),
        math.log1p(words),
    ]


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


class EndOfTurnModel:
    def __init__(self, params: Mapping) -> None:
        names = tuple(params["features"])
        if names != FEATURES:
            raise ValueError(f"weights are for features {names}, this code computes {FEATURES}")
        self.features = names
        self.mean = [float(x) for x in params["mean"]]
        self.scale = [float(x) for x in params["scale"]]
        self.weights = [float(x) for x in params["weights"]]
        self.bias = float(params["bias"])
        self.threshold = float(params["threshold"])
        self.action_delay_ms = float(params["action_delay_ms"])
        self.timeout_ms = float(params["timeout_ms"])
        if not (len(self.mean) == len(self.scale) == len(self.weights) == len(names)):
            raise ValueError("weights json: mean, scale and weights must each have one value per feature")
        self.params = dict(params)

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> EndOfTurnModel:
        return cls(json.loads(Path(path).read_text()))

    @classmethod
    @functools.cache
    def shipped(cls) -> EndOfTurnModel:
        """The weights beside this file, read once per process."""
        return cls.load()

    def standardised(self, features: Sequence[float | None] | Mapping[str, float | None]) -> list[float]:
        xs = [features.get(n) for n in self.features] if isinstance(features, Mapping) else list(features)
        if len(xs) != len(self.features):
            raise ValueError(f"{len(xs)} features given, the model has {len(self.features)}")
        return [0.0 if x is None else (x - m) / s for x, m, s in zip(xs, self.mean, self.scale, strict=True)]

    def probability(self, features: Sequence[float | None] | Mapping[str, float | None]) -> float:
        """P(end of turn) for a feature vector (FEATURES order) or a mapping by feature name."""
        z = self.bias + sum(w * x for w, x in zip(self.weights, self.standardised(features), strict=True))
        return sigmoid(z)

    def p_end(self, cues: EotCues, silence_ms: float) -> float:
        return self.probability(vector(cues, silence_ms))

    def fires(self, cues: EotCues, silence_ms: float) -> bool:
        """Does this much silence end the turn, given the cues?"""
        if silence_ms >= self.timeout_ms:
            return True
        return silence_ms >= self.action_delay_ms and self.p_end(cues, silence_ms) >= self.threshold

    def wait_ms(self, cues: EotCues, step_ms: float = 10.0) -> float:
        """The silence after which `fires` first says yes (on a `step_ms` grid; the timeout at most)."""
        t = self.action_delay_ms
        while t < self.timeout_ms:
            if self.fires(cues, t):
                return t
            t += step_ms
        return self.timeout_ms
