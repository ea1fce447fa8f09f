"""Segmentation benchmark: energy detector vs Silero on long streams of real speech.

Streams are the corpus clips (../shared/corpus next to the repo, or $SPEECH_CORPUS) in a seeded
random order, each normalised to an active level of -26 dBFS, separated by pauses
drawn from 0.3-2 s, with 1 s before the first clip and 1.5 s after the last. Noise
(white, pink, babble of 6 talkers made from corpus clips) runs through the whole
stream at a given SNR against the speech's active level. In the clean condition the
pauses are digital silence, so a clip's own room tone starts abruptly at its edge.

Reference: a clip's voiced runs, 10 ms frames at or above max(clip peak - 35 dB,
clip noise floor + 10 dB) in runs of at least 30 ms (noise floor = 10th percentile of
frame levels; that term keeps a clip's own room tone, e.g. the 0.45 s at the head of
the LibriSpeech clip, out of the reference). Runs separated by less than the
detector's max_silence_duration form one reference utterance; a gap within 0.1 s of
it is ambiguous and joined only where a detection spans it ("amb" column).

Segmentation view: max_silence_duration=0.25 s, pause_duration=0.15 s, so each clip is
about one utterance (reading pauses of 0.3-0.6 s inside LJSpeech clips make several).
Turn view: the default DetectorConfig (0.9 s), where short pauses merge clips.

A detection matches a reference (one-to-one, by largest overlap) if they overlap
("overlap" columns), and strictly if onset and end are both within TOL of the
reference. Boundary errors are over all one-to-one pairs. Run:
    .venv/bin/python bench/segmentation.py
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.audio import STT_RATE  # noqa: E402
from shared.speech_detector import AudioSpeechDetector, DetectorConfig, SpeechStarted, UtteranceEnded  # noqa: E402

CORPUS = Path(os.environ.get("SPEECH_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
ACTIVE_DBFS = -26.0
TOL = 0.15  # boundary tolerance, seconds
AMBIG = 0.1  # a reference gap this close to max_silence_duration may be split or not
SEG_CFG = DetectorConfig(max_silence_duration=0.25, pause_duration=0.15)
CONDITIONS = [("clean", None, None)] + [(k, k, s) for s in (20.0, 10.0) for k in ("white", "pink", "babble")]
FRAME = 160  # 10 ms


@dataclass
class Clip:
    id: str
    audio: np.ndarray  # float32, normalised to ACTIVE_DBFS
    runs: list[tuple[float, float]]  # voiced runs in clip time, seconds

    @property
    def v0(self) -> float:
        return self.runs[0][0]

    @property
    def v1(self) -> float:
        return self.runs[-1][1]


def frame_levels(x: np.ndarray) -> np.ndarray:
    f = x[: len(x) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    return 10 * np.log10(np.mean(f * f, axis=1) + 1e-10)


def voiced_runs(x: np.ndarray, min_run: int = 3) -> tuple[list[tuple[float, float]], float]:
    """Voiced runs (seconds) and active level (dBFS) of a clip, by the rule in the module docstring."""
    db = frame_levels(x)
    on = db >= max(db.max() - 35.0, np.percentile(db, 10) + 10.0)
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    runs = [(a, b) for a, b in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True) if b - a >= min_run]
    active = np.concatenate([db[a:b] for a, b in runs])
    level = 10 * np.log10(np.mean(10 ** (active / 10)))
    return [(a * FRAME / STT_RATE, b * FRAME / STT_RATE) for a, b in runs], float(level)


def load_corpus(limit: int | None = None, skip: int = 0) -> list[Clip]:
    with open(CORPUS / "manifest.tsv", newline="") as fh:
        ids = [r["id"] for r in csv.DictReader(fh, delimiter="\t")]
    clips = []
    for cid in ids[skip:][:limit]:
        x, rate = sf.read(CORPUS / "wav" / f"{cid}.wav", dtype="float32", always_2d=False)
        assert rate == STT_RATE and x.ndim == 1, f"{cid}: expected 16 kHz mono"
        runs, level = voiced_runs(x)
        clips.append(Clip(cid, (x * 10 ** ((ACTIVE_DBFS - level) / 20)).astype(np.float32), runs))
    return clips


def make_noise(kind: str, n: int, rng: np.random.Generator, babble_clips: list[Clip]) -> np.ndarray:
    """Unit-power noise of n samples."""
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / STT_RATE)
        spec /= np.sqrt(np.maximum(f, 20.0))
        x = np.fft.irfft(spec, n)
    elif kind == "babble":
        x = np.zeros(n)
        for _ in range(6):  # 6 talkers, each a random sequence of voiced clip regions, no pauses
            parts, total = [], 0
            while total < n + STT_RATE * 10:
                c = babble_clips[rng.integers(len(babble_clips))]
                seg = c.audio[int(c.v0 * STT_RATE) : int(c.v1 * STT_RATE)]
                parts.append(seg)
                total += len(seg)
            talker = np.concatenate(parts)
            start = rng.integers(STT_RATE * 10)
            x += talker[start : start + n]
    else:
        raise ValueError(kind)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def build_stream(
    clips: list[Clip],
    seed: int = 0,
    noise: str | None = None,
    snr_db: float | None = None,
    babble_clips: list[Clip] | None = None,
    pause: tuple[float, float] = (0.3, 2.0),
    lead: float = 1.0,
    tail: float = 1.5,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Stream audio and its voiced runs [(onset s, end s)] (see `reference`). Same seed = same order and pauses."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    gaps = rng.uniform(*pause, size=len(clips) - 1)
    parts, runs, pos = [np.zeros(int(lead * STT_RATE), np.float32)], [], int(lead * STT_RATE)
    for k, i in enumerate(order):
        c = clips[i]
        runs += [(pos / STT_RATE + a, pos / STT_RATE + b) for a, b in c.runs]
        parts.append(c.audio)
        pos += len(c.audio)
        gap = int((gaps[k] if k < len(gaps) else tail) * STT_RATE)
        parts.append(np.zeros(gap, np.float32))
        pos += gap
    audio = np.concatenate(parts)
    if noise is not None:
        nrng = np.random.default_rng([seed, zlib.crc32(noise.encode()), int(snr_db * 10)])
        gain = 10 ** ((ACTIVE_DBFS - snr_db) / 20)
        audio = audio + gain * make_noise(noise, len(audio), nrng, babble_clips or clips)
    return audio.astype(np.float32), runs


def reference(runs: list[tuple[float, float]], max_gap: float, dets: list[tuple[float, float]]) -> tuple[list, int]:
    """Reference utterances: voiced runs joined across gaps shorter than max_gap - AMBIG. A gap
    within AMBIG of max_gap is joined only where a detection spans it (the reference cannot
    place it more precisely). Returns (utterances, number of ambiguous gaps)."""
    out, ambiguous = [runs[0]], 0
    for on, end in runs[1:]:
        gap = on - out[-1][1]
        if abs(gap - max_gap) <= AMBIG:
            ambiguous += 1
            join = any(d0 < out[-1][1] and d1 > on for d0, d1 in dets)
        else:
            join = gap < max_gap
        if join:
            out[-1] = (out[-1][0], end)
        else:
            out.append((on, end))
    return out, ambiguous


def run_detector(audio: np.ndarray, make: Callable[[], AudioSpeechDetector], frame: int = 320) -> list[tuple[float, float]]:
    """Push the stream in 20 ms frames; return detected utterances [(SpeechStarted.t, UtteranceEnded.t)]."""
    det, utts, onset = make(), [], None
    for i in range(0, len(audio), frame):
        for ev in det.push(audio[i : i + frame]):
            if isinstance(ev, SpeechStarted):
                onset = ev.t
            elif isinstance(ev, UtteranceEnded):
                utts.append((onset, ev.t))
    utts += [(onset, ev.t) for ev in det.flush() if isinstance(ev, UtteranceEnded)]
    return utts


def score(refs: list[tuple[float, float]], dets: list[tuple[float, float]], tol: float = TOL) -> dict:
    ov = np.array([[max(0.0, min(r[1], d[1]) - max(r[0], d[0])) for d in dets] for r in refs]).reshape(len(refs), len(dets))
    pairs, used_r, used_d = [], set(), set()
    for flat in np.argsort(-ov, axis=None):
        ri, di = divmod(int(flat), len(dets))
        if ov[ri, di] <= 0:
            break
        if ri not in used_r and di not in used_d:
            pairs.append((ri, di))
            used_r.add(ri)
            used_d.add(di)
    on_err = np.array([dets[d][0] - refs[r][0] for r, d in pairs])
    end_err = np.array([dets[d][1] - refs[r][1] for r, d in pairs])
    strict = int(np.sum((np.abs(on_err) <= tol) & (np.abs(end_err) <= tol))) if pairs else 0
    nd, nr = max(len(dets), 1), max(len(refs), 1)

    def stat(e: np.ndarray, q: float) -> float:
        return round(float(np.percentile(np.abs(e), q)) * 1000, 1) if len(e) else float("nan")

    return {
        "n_ref": len(refs),
        "n_det": len(dets),
        "precision": strict / nd,
        "recall": strict / nr,
        "precision_overlap": float(np.mean((ov > 0).any(axis=0))) if dets else 0.0,
        "recall_overlap": float(np.mean((ov > 0).any(axis=1))) if dets else 0.0,
        "split_refs": int(np.sum((ov > 0).sum(axis=1) > 1)),
        "merged_dets": int(np.sum((ov > 0).sum(axis=0) > 1)) if dets else 0,
        "onset_med_ms": stat(on_err, 50),
        "onset_p90_ms": stat(on_err, 90),
        "end_med_ms": stat(end_err, 50),
        "end_p90_ms": stat(end_err, 90),
        "onset_signed_med_ms": round(float(np.median(on_err)) * 1000, 1) if pairs else float("nan"),
        "end_signed_med_ms": round(float(np.median(end_err)) * 1000, 1) if pairs else float("nan"),
    }


def detectors(cfg: DetectorConfig) -> dict[str, Callable[[], AudioSpeechDetector]]:
    from shared.silero import SileroClassifier

    return {
        "energy": lambda: AudioSpeechDetector(cfg),
        "silero": lambda: AudioSpeechDetector(cfg, SileroClassifier()),
    }


def evaluate(
    audio: np.ndarray, runs: list[tuple[float, float]], make: Callable[[], AudioSpeechDetector], cfg: DetectorConfig = SEG_CFG
) -> dict:
    """Run one detector over a stream and score it against the reference for cfg.max_silence_duration."""
    dets = run_detector(audio, make)
    refs, ambiguous = reference(runs, cfg.max_silence_duration, dets)
    return score(refs, dets) | {"ambiguous_gaps": ambiguous}


HEADER = f"{'condition':<12}{'detector':<8}{'ref':>4}{'det':>5}{'P':>7}{'R':>7}{'P_ovl':>7}{'R_ovl':>7}{'split':>6}{'merge':>6}{'amb':>4}  {'onset med/p90 ms':>17}  {'end med/p90 ms':>15}"


def row(cond: str, name: str, m: dict) -> str:
    return (
        f"{cond:<12}{name:<8}{m['n_ref']:>4}{m['n_det']:>5}{m['precision']:>7.3f}{m['recall']:>7.3f}"
        f"{m['precision_overlap']:>7.3f}{m['recall_overlap']:>7.3f}{m['split_refs']:>6}{m['merged_dets']:>6}{m['ambiguous_gaps']:>4}"
        f"  {m['onset_med_ms']:>8.0f}/{m['onset_p90_ms']:<8.0f}  {m['end_med_ms']:>7.0f}/{m['end_p90_ms']:<7.0f}"
    )


def main() -> None:
    t0 = time.time()
    clips = load_corpus()
    views = {
        "segmentation (max_silence_duration=0.25 s, pause_duration=0.15 s)": SEG_CFG,
        "turn view (default DetectorConfig, max_silence_duration=0.9 s)": DetectorConfig(),
    }
    results: dict = {"clips": len(clips), "tolerance_ms": TOL * 1000, "active_dbfs": ACTIVE_DBFS, "views": {}}
    for title, cfg in views.items():
        print(f"\n{title}; {len(clips)} clips, strict match = both boundaries within {TOL * 1000:.0f} ms")
        print(HEADER)
        view = results["views"][title] = {"config": cfg.__dict__, "conditions": {}}
        for cond, kind, snr in CONDITIONS:
            label = cond if snr is None else f"{cond} {snr:.0f}dB"
            audio, runs = build_stream(clips, seed=0, noise=kind, snr_db=snr)
            view["conditions"][label] = {}
            for name, make in detectors(cfg).items():
                m = evaluate(audio, runs, make, cfg)
                view["conditions"][label][name] = m
                print(row(label, name, m))
    seg = results["views"][next(iter(views))]["conditions"]
    for name in next(iter(seg.values())):
        ms = [seg[c][name] for c in seg if c.endswith("20dB")]
        ok = all(m["precision"] >= 0.95 and m["recall"] >= 0.95 and max(m["onset_med_ms"], m["end_med_ms"]) <= 150 for m in ms)
        worst = min(min(m["precision"], m["recall"]) for m in ms)
        print(
            f"target at 20 dB (P, R >= 0.95, median boundary errors <= 150 ms), {name}: {'met' if ok else 'MISSED'} (worst P/R {worst:.3f})"
        )
    results["targets_20db"] = "P, R >= 0.95 and median onset/end error <= 150 ms in every 20 dB condition"
    out = Path(__file__).parent / "results" / "segmentation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
