"""The session's speech detector, built from the server's settings and the agent's and client's overrides."""

from __future__ import annotations

import asyncio

from shared.config import ServerSettings
from shared.protocol import DetectorOverrides
from shared.speech_detector import AudioSpeechDetector, DetectorConfig


def make_detector(cfg: ServerSettings, *overrides: DetectorOverrides | None) -> tuple[AudioSpeechDetector, float]:
    """The session's detector, and the silence after which an unsure turn ends.

    The detector itself closes an utterance only after the longest wait (words and sound
    both unfinished); the turn-taker confirms earlier when the evidence allows."""
    base = DetectorConfig(
        energy_threshold=cfg.energy_threshold,
        min_speech_duration=cfg.min_speech_duration,
        pause_duration=cfg.pause_duration,
        max_silence_duration=cfg.max_silence_duration,
        max_recording_duration=cfg.max_recording_duration,
    )
    engine = cfg.detector
    for o in overrides:
        if o is not None:
            base = base.with_overrides(**o.model_dump(exclude={"engine"}))
            engine = o.engine or engine
    cap = base.max_silence_duration
    if cfg.end_of_turn_policy != "text":
        base = base.with_overrides(max_silence_duration=max(cap, cfg.unfinished_max_silence))
    if engine == "silero":
        from shared.silero import SileroClassifier

        return AudioSpeechDetector(base, SileroClassifier()), cap  # loads an ONNX model: call off the event loop
    return AudioSpeechDetector(base), cap


async def new_detector(cfg: ServerSettings, *overrides: DetectorOverrides | None) -> tuple[AudioSpeechDetector, float]:
    return await asyncio.to_thread(make_detector, cfg, *overrides)
