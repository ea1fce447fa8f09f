"""Speech segmentation on a stream of real corpus clips (a smaller run of bench/segmentation.py),
plus unit tests of the Silero classifier."""

from __future__ import annotations

import numpy as np
import pytest

from bench.segmentation import SEG_CFG, build_stream, evaluate, load_corpus, reference, score
from shared.silero import SileroClassifier
from shared.speech_detector import AudioSpeechDetector, SpeechStarted, UtteranceEnded


@pytest.fixture(scope="module")
def seg_clips():
    clips = load_corpus()
    assert len(clips) >= 8, "the speech corpus should hold at least 8 clips"
    return clips[::2], clips[1::2]  # stream clips, babble/other clips


def _energy() -> AudioSpeechDetector:
    return AudioSpeechDetector(SEG_CFG)


def _silero() -> AudioSpeechDetector:
    return AudioSpeechDetector(SEG_CFG, SileroClassifier())


def _check(m: dict, min_pr: float, max_median_ms: float) -> None:
    assert m["recall_overlap"] >= 0.95, m
    assert m["precision"] >= min_pr and m["recall"] >= min_pr, m
    assert m["onset_med_ms"] <= max_median_ms and m["end_med_ms"] <= max_median_ms, m


@pytest.mark.parametrize("noise", ["white", "pink"])
def test_energy_detector_segments_speech_in_noise_at_20db(seg_clips, noise):
    stream, other = seg_clips
    audio, runs = build_stream(stream, seed=0, noise=noise, snr_db=20.0, babble_clips=other)
    _check(evaluate(audio, runs, _energy), min_pr=0.85, max_median_ms=150)


def test_energy_detector_segments_clean_speech(seg_clips):
    audio, runs = build_stream(seg_clips[0], seed=0)
    _check(evaluate(audio, runs, _energy), min_pr=0.85, max_median_ms=150)


def test_silero_detector_segments_clean_speech(seg_clips):
    audio, runs = build_stream(seg_clips[0], seed=0)
    _check(evaluate(audio, runs, _silero), min_pr=0.8, max_median_ms=150)


def test_stream_reference_and_noise_level(seg_clips):
    stream, other = seg_clips
    clean, runs = build_stream(stream, seed=3)
    noisy, runs2 = build_stream(stream, seed=3, noise="pink", snr_db=10.0, babble_clips=other)
    assert runs == runs2 and len(clean) == len(noisy)
    assert all(b > a for a, b in runs) and all(runs[i][1] <= runs[i + 1][0] for i in range(len(runs) - 1))
    noise = noisy - clean
    active = np.concatenate([clean[int(a * 16000) : int(b * 16000)] for a, b in runs])
    snr = 10 * np.log10(np.mean(active.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert 8.0 < snr < 12.5  # active level counts only voiced runs, which still hold some quiet frames


def test_score_matching_and_tolerance():
    refs = [(1.0, 2.0), (3.0, 4.0), (6.0, 7.0)]
    dets = [(1.05, 2.1), (2.9, 4.5), (8.0, 9.0)]
    m = score(refs, dets)
    assert (m["precision"], m["recall"]) == (1 / 3, 1 / 3)  # (2.9, 4.5) ends 500 ms late
    assert (m["precision_overlap"], m["recall_overlap"]) == (2 / 3, 2 / 3)
    assert m["onset_med_ms"] == pytest.approx(75.0)


def test_reference_joins_gaps_by_max_silence():
    runs = [(0.0, 1.0), (1.1, 2.0), (2.5, 3.0), (4.0, 5.0)]
    refs, amb = reference(runs, 0.25, dets=[])
    assert refs == [(0.0, 2.0), (2.5, 3.0), (4.0, 5.0)] and amb == 0
    refs, amb = reference(runs, 0.45, dets=[(1.5, 2.8)])  # gap 0.5 is ambiguous; the detection spans it
    assert refs == [(0.0, 3.0), (4.0, 5.0)] and amb == 1


# ----------------------------------------------------------------------------- SileroClassifier


def test_silero_silence_and_quiet_noise_are_not_speech():
    clf = SileroClassifier()
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 2, np.float32)
    hiss = (rng.standard_normal(16000 * 2) * 10 ** (-60 / 20)).astype(np.float32)
    for x in (silence, hiss):
        assert not any(clf.score(x[i : i + 512], False)[0] for i in range(0, len(x), 512))
        det = AudioSpeechDetector(SEG_CFG, SileroClassifier())
        assert det.push(x) + det.flush() == []


def test_silero_detects_a_corpus_clip_with_pre_roll(seg_clips):
    clip = seg_clips[0][1]
    x = np.concatenate([np.zeros(16000, np.float32), clip.audio, np.zeros(16000, np.float32)])
    det = AudioSpeechDetector(SEG_CFG.with_overrides(max_silence_duration=0.9), SileroClassifier())
    assert det.hop == 512
    events = [e for i in range(0, len(x), 320) for e in det.push(x[i : i + 320])] + det.flush()
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(starts) == len(ends) == 1, events
    assert abs(starts[0].t - (1.0 + clip.v0)) < 0.15
    assert abs(ends[0].t - (1.0 + clip.v1)) < 0.3
    # the utterance audio begins about pre_roll (0.3 s, 9 hops of 512) before the onset
    assert len(ends[0].audio) / 16000 >= ends[0].t - starts[0].t + 0.25


def test_silero_state_is_per_instance():
    clip_a, clip_b = load_corpus(limit=2)
    a, b = clip_a.audio[: 512 * 40], clip_b.audio[: 512 * 40]
    alone = [SileroClassifier(), SileroClassifier()]
    ref_a = [alone[0].probability(a[i : i + 512]) for i in range(0, len(a), 512)]
    ref_b = [alone[1].probability(b[i : i + 512]) for i in range(0, len(b), 512)]
    x, y = SileroClassifier(), SileroClassifier()
    both = [(x.probability(a[i : i + 512]), y.probability(b[i : i + 512])) for i in range(0, len(a), 512)]
    assert np.allclose([p for p, _ in both], ref_a, atol=1e-5)
    assert np.allclose([q for _, q in both], ref_b, atol=1e-5)
    assert max(ref_a) > 0.9  # speech is recognised once the recurrent state has context


def test_silero_missing_model_names_the_package(monkeypatch):
    import shared.silero as silero

    monkeypatch.setattr(silero, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="silero-vad"):
        silero.model_path()
