"""Speech sets for the benchmarks, built once from the corpus (deterministic, seeded).

    python bench/speech_sets.py                 # list every set: id, duration, pauses, reference

- plain:      the corpus clips as recorded (one sentence each).
- pause grid: the longest clips with their quietest mid-sentence gap replaced by a
              0.3-0.85 s pause (turn-taking's original set; one thought).
- long:       2-4 clips of one speaker joined into a 6-15 s utterance; each clip's own
              leading/trailing silence is trimmed and replaced by a 150-400 ms pause.
- unfinished: a clip cut at its quietest gap in the middle third (mid-sentence in these
              read sentences, so the words so far read unfinished) with a 1-2 s pause
              inserted there; the sentence then continues.

The reference is always the whole utterance's transcript: a reply that starts during an
inner pause started before the speaker finished.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.wer import normalise, wer  # noqa: E402
from testing.session_client import SessionResult  # noqa: E402
from tests.conftest import CORPUS, Clip, load_corpus, with_pause  # noqa: E402

RATE = 16000
FRAME = 320  # 20 ms
SEED = 10
NAMES = ("plain", "long", "unfinished")
GRID_PAUSES = (0.3, 0.5, 0.7, 0.85)
UNFINISHED_PAUSES = (1.0, 1.3, 1.6, 2.0)
LONG_SECONDS = (6.0, 15.0)
LONG_PAUSE = (0.15, 0.4)


@dataclass(frozen=True)
class Utterance:
    id: str
    set: str
    speaker: str
    audio: np.ndarray  # int16, 16 kHz mono
    reference: str
    pauses: tuple[float, ...] = ()  # inner pauses we put in, seconds

    @property
    def duration(self) -> float:
        return len(self.audio) / RATE


def speakers() -> dict[str, str]:
    """Clip id -> speaker, from the corpus manifest."""
    with open(CORPUS / "manifest.tsv") as f:
        return {r["id"]: r["speaker"] for r in csv.DictReader(f, delimiter="\t")}


def trim(pcm: np.ndarray, drop_db: float = 35.0) -> np.ndarray:
    """The clip from its first to its last voiced 20 ms frame (within `drop_db` of its peak)."""
    n = len(pcm) // FRAME * FRAME
    f = pcm[:n].astype(np.float32).reshape(-1, FRAME) / 32768
    db = 10 * np.log10((f**2).mean(1) + 1e-12)
    voiced = np.nonzero(db > db.max() - drop_db)[0]
    return pcm[int(voiced[0]) * FRAME : int(voiced[-1] + 1) * FRAME]


def _interleave(groups: Sequence[Sequence[Utterance]]) -> list[Utterance]:
    """Round-robin over groups, so that the first N of a set cover every group."""
    out: list[Utterance] = []
    for k in range(max((len(g) for g in groups), default=0)):
        out.extend(g[k] for g in groups if k < len(g))
    return out


def _latin(clips: Sequence[Clip], pauses: Sequence[float], name: str) -> list[Utterance]:
    """Every clip at every pause, ordered so each run of len(clips) cycles through the pauses."""
    who = speakers()
    out = []
    for r in range(len(pauses)):
        for i, clip in enumerate(clips):
            p = pauses[(i + r) % len(pauses)]
            out.append(Utterance(f"{clip.id}@{p:.2f}", name, who.get(clip.id, "?"), with_pause(clip.audio, p)[0], clip.transcript, (p,)))
    return out


def plain_set(corpus: Sequence[Clip]) -> list[Utterance]:
    who = speakers()
    return [Utterance(c.id, "plain", who.get(c.id, "?"), c.audio, c.transcript) for c in corpus]


def pause_grid_set(corpus: Sequence[Clip], clips: int = 8) -> list[Utterance]:
    longest = sorted(corpus, key=lambda c: -len(c.audio))[:clips]
    return _latin(longest, GRID_PAUSES, "plain")


def unfinished_set(corpus: Sequence[Clip], min_seconds: float = 3.5) -> list[Utterance]:
    """Clips long enough that the middle third holds a gap between words, longest first."""
    clips = sorted((c for c in corpus if len(c.audio) >= min_seconds * RATE), key=lambda c: -len(c.audio))
    return _latin(clips, UNFINISHED_PAUSES, "unfinished")


def long_set(corpus: Sequence[Clip], seed: int = SEED) -> list[Utterance]:
    """Disjoint groups of 2-4 clips per speaker, 6-15 s each once joined."""
    rng = np.random.default_rng(seed)
    who = speakers()
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for c in sorted(corpus, key=lambda c: c.id):
        by_speaker[who.get(c.id, "?")].append(c)
    lo, hi = LONG_SECONDS
    per_speaker = []
    for spk in sorted(by_speaker):
        pool = [by_speaker[spk][i] for i in rng.permutation(len(by_speaker[spk]))]
        trimmed = {c.id: trim(c.audio) for c in pool}
        made: list[Utterance] = []
        while len(pool) >= 2:
            gaps = rng.uniform(*LONG_PAUSE, size=3).round(3)
            want = int(rng.integers(2, 5))  # 2-4 clips, if the duration allows
            group: list[Clip] = []
            for c in pool:
                if len(group) == 4 or (len(group) >= want and _joined(group, trimmed, gaps) >= lo):
                    break
                if _joined([*group, c], trimmed, gaps) <= hi:
                    group.append(c)
            if len(group) < 2 or _joined(group, trimmed, gaps) < lo:
                break  # what is left of this speaker is too short
            parts: list[np.ndarray] = []
            for k, c in enumerate(group):
                if k:
                    parts.append(np.zeros(int(gaps[k - 1] * RATE), np.int16))
                parts.append(trimmed[c.id])
            used = {c.id for c in group}
            pool = [c for c in pool if c.id not in used]
            made.append(Utterance("+".join(c.id for c in group), "long", spk, np.concatenate(parts),
                                  " ".join(c.transcript for c in group), tuple(float(g) for g in gaps[: len(group) - 1])))
        per_speaker.append(made)
    return _interleave(per_speaker)


def _joined(group: Sequence[Clip], trimmed: dict[str, np.ndarray], gaps: np.ndarray) -> float:
    return (sum(len(trimmed[c.id]) for c in group) + sum(gaps[: len(group) - 1]) * RATE) / RATE


def final_transcripts(res: SessionResult) -> list[tuple[int, str]]:
    """(turn_id, text) of the session's transcripts, less those a later one `replaces`."""
    msgs = res.of("transcript")
    replaced = {m["replaces"] for m in msgs if m.get("replaces") is not None}
    return [(m["turn_id"], m["text"]) for m in msgs if m["turn_id"] not in replaced]


def answer_latency(res: SessionResult) -> float | None:
    """End of speech -> first audio of the turn that answered the whole utterance (the last
    transcript's turn), in seconds; None if it has no audio or its audio came early."""
    final = final_transcripts(res)
    if not final:
        return res.latency
    tid = final[-1][0]
    times = [e.t for e in res.events if e.type == "tts_stream" and e.msg["data"]["turn_id"] == tid]
    if not times or res.speech_end is None or min(times) < res.speech_end:
        return None
    return min(times) - res.speech_end


def answer_stages(res: SessionResult) -> dict[str, float]:
    """The server's stage timings (ms from its end of speech) for the answering turn."""
    metrics = res.of("metrics")
    final = final_transcripts(res)
    mine = [m for m in metrics if final and m["turn_id"] == final[-1][0]]
    return dict((mine or metrics or [{"stages": {}}])[-1]["stages"])


def one_turn(res: SessionResult, reference: str, max_wer: float = 0.35) -> bool:
    """Answered as one turn: exactly one transcript left (earlier ones `replaces`d), and it
    covers the whole utterance: WER against the full reference within `max_wer`, and its
    end is the utterance's end (2 of the reference's last 3 words among its last 6), so a
    turn that lost the words after a pause does not count."""
    final = final_transcripts(res)
    if len(final) != 1 or wer([reference], [final[0][1]]) > max_wer:
        return False
    tail = normalise(final[0][1])[-6:]
    return sum(w in tail for w in normalise(reference)[-3:]) >= min(2, len(normalise(reference)))


def pct(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def build(names: Sequence[str], limit: int | None = None, *, grid_clips: int | None = None) -> dict[str, list[Utterance]]:
    """The named sets, each cut to `limit` utterances. With `grid_clips`, "plain" is the
    pause grid over that many of the longest clips (turn-taking) instead of the clips as recorded."""
    corpus = load_corpus()
    makers = {
        "plain": (lambda: plain_set(corpus)) if grid_clips is None else (lambda: pause_grid_set(corpus, grid_clips)),
        "long": lambda: long_set(corpus),
        "unfinished": lambda: unfinished_set(corpus),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise SystemExit(f"unknown set(s) {sorted(unknown)}; choose from {', '.join(NAMES)}")
    return {n: makers[n]()[:limit] for n in names}


def main() -> None:
    for name, utts in build(NAMES).items():
        print(f"{name}: {len(utts)} utterances")
        for u in utts:
            pauses = ",".join(f"{p:.2f}" for p in u.pauses) or "-"
            print(f"  {u.id:60s} {u.speaker:18s} {u.duration:5.1f}s  pauses {pauses:16s} {u.reference[:70]}")


if __name__ == "__main__":
    main()
