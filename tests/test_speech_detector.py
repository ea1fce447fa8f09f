"""The energy speech detector on synthetic signals: decisions depend on time, not on frame sizes."""

import numpy as np
import pytest

from shared.speech_detector import (
    AudioSpeechDetector,
    DetectorConfig,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    UtteranceEnded,
)

RATE = 16000
rng = np.random.default_rng(0)


def silence(s: float, level_db: float | None = None) -> np.ndarray:
    if level_db is None:
        return np.zeros(int(RATE * s), np.float32)
    return noise(s, level_db)


def noise(s: float, level_db: float) -> np.ndarray:
    return (rng.standard_normal(int(RATE * s)) * 10 ** (level_db / 20)).astype(np.float32)


def burst(s: float, level_db: float = -20.0, freq: float = 220.0) -> np.ndarray:
    """A voiced-like tone burst with a 4 Hz syllable envelope (never fully silent)."""
    t = np.arange(int(RATE * s)) / RATE
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    amp = 10 ** (level_db / 20) * np.sqrt(2)
    return (amp * env * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run(signal: np.ndarray, frame_ms: float = 20, cfg: DetectorConfig | None = None):
    det = AudioSpeechDetector(cfg or DetectorConfig())
    step = max(1, int(RATE * frame_ms / 1000))
    events = []
    for i in range(0, len(signal), step):
        events += det.push(signal[i : i + step])
    return events


def utterances(events):
    out, start = [], None
    for ev in events:
        if isinstance(ev, SpeechStarted):
            start = ev.t
        elif isinstance(ev, UtteranceEnded):
            out.append((round(start, 2), round(ev.t, 2), ev.reason))
    return out


def test_silence_and_quiet_noise_give_nothing():
    assert run(silence(5)) == []
    assert run(noise(5, -60)) == []


def test_steady_noise_is_learned_as_floor():
    # loud constant noise: after the floor adapts, no utterance is reported for it
    events = run(noise(8, -30))
    assert len(utterances(events)) <= 1  # at most the initial onset before adaptation
    later = run(np.concatenate([noise(8, -30), noise(5, -30)]))
    assert [u for u in utterances(later) if u[0] > 6] == []


def test_single_burst_boundaries():
    sig = np.concatenate([silence(1), burst(1.5), silence(2)])
    (u,) = utterances(run(sig))
    assert u[0] == pytest.approx(1.0, abs=0.03) and u[1] == pytest.approx(2.5, abs=0.03) and u[2] == "silence"


def test_speech_in_noise_is_found():
    n = noise(6, -45)
    n[int(2 * RATE) : int(3.5 * RATE)] += burst(1.5, -20)
    (u,) = utterances(run(n))
    assert u[0] == pytest.approx(2.0, abs=0.05) and u[1] == pytest.approx(3.5, abs=0.05)


@pytest.mark.parametrize("frame_ms", [10, 20, 32, 50, 100, 250, 7.3])
def test_frame_size_does_not_change_segmentation(frame_ms):
    sig = np.concatenate([silence(0.7), burst(0.9), silence(0.5), burst(1.2), silence(1.5), burst(0.4), silence(1.5)])
    reference = utterances(run(sig, frame_ms=20))
    assert utterances(run(sig, frame_ms=frame_ms)) == reference
    assert len(reference) == 2  # the 0.5 s gap stays inside the first utterance


def test_min_speech_duration_rejects_clicks_but_keeps_yes():
    click = np.concatenate([silence(1), burst(0.03, -10), silence(2)])
    assert utterances(run(click)) == []
    yes = np.concatenate([silence(1), burst(0.25, -20), silence(2)])
    assert len(utterances(run(yes))) == 1
    strict = DetectorConfig(min_speech_duration=0.5)
    assert utterances(run(yes, cfg=strict)) == []


def test_max_silence_duration_decides_splits():
    sig = np.concatenate([silence(0.5), burst(1), silence(0.7), burst(1), silence(2)])
    assert len(utterances(run(sig, cfg=DetectorConfig(max_silence_duration=0.9)))) == 1
    assert len(utterances(run(sig, cfg=DetectorConfig(max_silence_duration=0.5)))) == 2


def test_pause_then_resume_events():
    sig = np.concatenate([silence(0.5), burst(1), silence(0.4), burst(1), silence(2)])
    kinds = [type(e) for e in run(sig)]
    assert kinds == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechPaused, UtteranceEnded]


def test_max_recording_duration_cuts_long_speech():
    sig = np.concatenate([silence(0.5), burst(7), silence(2)])
    us = utterances(run(sig, cfg=DetectorConfig(max_recording_duration=3.0)))
    assert us[0][2] == "max_duration"
    assert us[0][1] - us[0][0] == pytest.approx(3.0 - DetectorConfig().pre_roll, abs=0.35)
    assert len(us) >= 2  # the rest of the speech starts a new utterance


def test_pre_roll_keeps_the_onset():
    sig = np.concatenate([silence(1), burst(1), silence(2)])
    ended = [e for e in run(sig) if isinstance(e, UtteranceEnded)][0]
    onset_in_audio = np.argmax(np.abs(ended.audio) > 1e-4) / RATE
    assert onset_in_audio >= 0.2  # at least 200 ms kept before the first voiced sample


def test_energy_threshold_knob():
    quiet = np.concatenate([noise(2, -50), noise(1, -50) + burst(1, -44), noise(2, -50)])
    assert len(utterances(run(quiet, cfg=DetectorConfig(energy_threshold=5)))) == 1
    assert utterances(run(quiet, cfg=DetectorConfig(energy_threshold=12))) == []
