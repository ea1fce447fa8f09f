"""The labelled set of bench/eot.py: user turns built from the corpus, every silence of 100 ms
or more labelled *hold* (the speaker goes on) or *end* (the last one of the turn).

    python bench/eot_data.py          # list the turns and their silences (builds the word-time cache once)

A turn is 1-3 clips of one speaker (`build_turns`), each trimmed to its voiced part:
- clips are joined by a pause of 100-800 ms (hold: "join");
- a clip of 5 words or more is, half of the time, cut at a word boundary in its middle
  (word times from faster-whisper's `word_timestamps=True`, run once per clip and cached in
  bench/results/eot_cache/words.json; the cut is moved to the quietest 10 ms within 120 ms of
  the boundary) and continues after 0.5-2 s (hold: "cut", an unfinished sentence);
- the pauses the reader left inside a clip stay as they are (hold: "natural");
- the turn ends on a clip whose reference reads finished (terminal punctuation, or the
  all-capitals LibriSpeech style, which has none), followed by 3.5 s of silence (end).
  Clips whose text is a fragment ("In eighteen thirteen", "... the true printed book,") are
  used only inside turns.
Inserted silence is Gaussian noise at the clip's own floor (its quietest 10 ms frames), so no
cue hears digital zeros. Each speaker's clips are dealt into turns `ROUNDS` times with
different orders, cuts and pauses (seeded): the same recordings recur in different turns.

The silences are those the session's own energy detector finds (shared/speech_detector.py
with the server's settings, Paused after 100 ms): a span starts at the last voiced 10 ms hop
and ends where the speech that resumes it began (`SpeechResumed` less min_speech_duration).

Split, by speaker, fixed: speaker ids sorted, the last third held out (never fitted or tuned
on); with the corpus as it is: train = arctic-aew, arctic-axb, arctic-unknown, cathy;
held-out = librispeech-1221, ljspeech.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.speech_sets import speakers  # noqa: E402
from shared.config import ServerSettings  # noqa: E402
from shared.speech_detector import AudioSpeechDetector, DetectorConfig, SpeechPaused, SpeechResumed, SpeechStarted  # noqa: E402
from tests.conftest import Clip, load_corpus  # noqa: E402

RATE = 16000
HOP = 160  # 10 ms
SEED = 20
ROUNDS = 8  # times each speaker's clips are dealt into turns
JOIN_PAUSE = (0.1, 0.8)  # s between the clips of one turn
CUT_PAUSE = (0.5, 2.0)  # s inside an unfinished sentence
CUT_SHARE = 0.5  # clips of >= CUT_MIN_WORDS words cut once
CUT_MIN_WORDS = 5
LEAD, TAIL = 0.5, 3.5  # s of silence before the turn, and after it (the end)
MIN_SPAN = 0.1  # silences shorter than this are no decision point (eot-bench)
CACHE = ROOT / "bench" / "results" / "eot_cache"


@dataclass(frozen=True)
class Span:
    """One silence of a turn: a decision point."""

    start: float  # s into the turn's stream: the last voiced hop's end
    duration: float | None  # s until the speaker went on; None at the end of the turn
    kind: str  # "end", or the hold's origin: "join", "cut", "natural"

    @property
    def end(self) -> bool:
        return self.duration is None


@dataclass
class Turn:
    id: str
    speaker: str
    split: str  # "train" | "heldout"
    audio: np.ndarray  # int16, 16 kHz, LEAD + speech + TAIL
    clips: list[str]
    reference: str
    inserted: list[tuple[float, str]] = field(default_factory=list)  # (where in the stream, "join" | "cut")
    spans: list[Span] = field(default_factory=list)
    onset: float = 0.0  # s: the detector's speech onset


def split_of(speaker_ids: list[str]) -> dict[str, str]:
    """Sorted speaker ids, the last third (at least one) held out."""
    ids = sorted(set(speaker_ids))
    n_held = max(1, len(ids) // 3)
    return {s: ("heldout" if i >= len(ids) - n_held else "train") for i, s in enumerate(ids)}


def reads_finished(reference: str) -> bool:
    """Does a corpus reference end a sentence? Terminal punctuation, or LibriSpeech's capitals (no punctuation)."""
    t = reference.strip().strip("\"'")
    if t.upper() == t and re.search(r"[A-Z]", t):
        return True
    return t.endswith((".", "!", "?"))


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng([SEED, *(zlib.crc32(str(k).encode()) for k in key)])


def _frames_db(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // HOP * HOP
    f = pcm[:n].astype(np.float32).reshape(-1, HOP) / 32768
    return 10 * np.log10((f**2).mean(1) + 1e-12)


def trim_bounds(pcm: np.ndarray, drop_db: float = 35.0) -> tuple[int, int]:
    """Samples [a, b) from the first to the last voiced 10 ms hop (within drop_db of the peak)."""
    db = _frames_db(pcm)
    voiced = np.nonzero(db > db.max() - drop_db)[0]
    return int(voiced[0]) * HOP, int(voiced[-1] + 1) * HOP


def floor_rms(pcm: np.ndarray) -> float:
    """The clip's background level (RMS of its quietest 10 ms frames), at least -80 dBFS."""
    db = np.sort(_frames_db(pcm))
    return float(max(10 ** (np.mean(db[: max(3, len(db) // 20)]) / 20), 1e-4))


def noise(seconds: float, rms: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.normal(0, rms * 32768, int(round(seconds * RATE))), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- word times


def word_times(clips: list[Clip], cache: Path = CACHE / "words.json") -> dict[str, list[tuple[str, float, float]]]:
    """(word, start s, end s) per clip, from faster-whisper (the STT's bundled model) with word
    timestamps; computed once and kept in `cache`."""
    have: dict = json.loads(cache.read_text()) if cache.exists() else {}
    missing = [c for c in clips if c.id not in have]
    if missing:
        from services.stt.engines.faster_whisper import FasterWhisperEngine
        from shared.config import SttSettings

        stt = FasterWhisperEngine(SttSettings())
        stt.load()
        for c in missing:
            segs, _ = stt.model.transcribe(c.audio.astype(np.float32) / 32768, language="en", word_timestamps=True, beam_size=1)
            have[c.id] = [(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3)) for s in segs for w in (s.words or [])]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(have, indent=0))
    return {k: [tuple(w) for w in v] for k, v in have.items()}  # type: ignore[misc]


def cut_point(pcm: np.ndarray, words: list[tuple[str, float, float]], offset: int, rng: np.random.Generator) -> int | None:
    """A sample of the trimmed clip between two words in its middle (2nd word to the one before
    the last two), not after a sentence's end, at the quietest hop near the boundary; None if none."""
    cands = [i for i in range(1, len(words) - 2) if not words[i][0].endswith((".", "!", "?"))]
    if len(words) < CUT_MIN_WORDS or not cands:
        return None
    i = int(rng.choice(cands))
    boundary = int((words[i][2] + words[i + 1][1]) / 2 * RATE) - offset
    lo, hi = max(HOP, boundary - int(0.12 * RATE)), min(len(pcm) - HOP, boundary + int(0.12 * RATE))
    if hi <= lo:
        return None
    db = _frames_db(pcm[lo:hi])
    return lo + int(np.argmin(db)) * HOP + HOP // 2


# --------------------------------------------------------------------------- turns


def build_turns(rounds: int = ROUNDS, clips: list[Clip] | None = None) -> list[Turn]:
    clips = sorted(clips if clips is not None else load_corpus(), key=lambda c: c.id)
    who = speakers()
    words = word_times(clips)
    splits = split_of([who.get(c.id, "?") for c in clips])
    by_speaker: dict[str, list[Clip]] = {}
    for c in clips:
        by_speaker.setdefault(who.get(c.id, "?"), []).append(c)
    turns: list[Turn] = []
    for spk in sorted(by_speaker):
        for r in range(rounds):
            rng = _rng(spk, r)
            pool = [by_speaker[spk][i] for i in rng.permutation(len(by_speaker[spk]))]
            groups = _deal(pool, rng)
            for g, group in enumerate(groups):
                turns.append(_assemble(f"{spk}/r{r}t{g}", spk, splits[spk], group, words, rng))
    for t in turns:
        label_spans(t)
    return turns


def _deal(pool: list[Clip], rng: np.random.Generator, most: int = 4) -> list[list[Clip]]:
    """Groups of 1-3 clips in pool order, each ending on a finished clip (moved to its end); a
    group with none goes in front of the next one (or of the last, up to `most` clips; else dropped)."""
    groups: list[list[Clip]] = []
    carry: list[Clip] = []
    i = 0
    while i < len(pool):
        k = int(rng.integers(1, 4))
        g, i = carry + pool[i : i + k], i + k
        done = [c for c in g if reads_finished(c.transcript)]
        if not done:
            carry = g
            continue
        last = done[-1]
        groups.append([c for c in g if c is not last] + [last])
        carry = []
    if carry and groups and len(carry) + len(groups[-1]) <= most:
        groups[-1] = carry + groups[-1]
    return groups


def _assemble(tid: str, spk: str, split: str, group: list[Clip], words: dict, rng: np.random.Generator) -> Turn:
    parts: list[np.ndarray] = []
    inserted: list[tuple[float, str]] = []
    pos = 0

    def add(x: np.ndarray) -> None:
        nonlocal pos
        parts.append(x)
        pos += len(x)

    first_floor = floor_rms(group[0].audio)
    add(noise(LEAD, first_floor, rng))
    for k, c in enumerate(group):
        a, b = trim_bounds(c.audio)
        pcm, rms = c.audio[a:b], floor_rms(c.audio)
        if k:
            inserted.append((pos / RATE, "join"))
            add(noise(float(rng.uniform(*JOIN_PAUSE)), rms, rng))
        cut = cut_point(pcm, words.get(c.id, []), a, rng) if rng.random() < CUT_SHARE else None
        if cut is None:
            add(pcm)
        else:
            add(pcm[:cut])
            inserted.append((pos / RATE, "cut"))
            add(noise(float(rng.uniform(*CUT_PAUSE)), rms, rng))
            add(pcm[cut:])
    add(noise(TAIL, floor_rms(group[-1].audio), rng))
    return Turn(tid, spk, split, np.concatenate(parts), [c.id for c in group], " ".join(c.transcript for c in group), inserted)


def detector_config(cfg: ServerSettings | None = None) -> DetectorConfig:
    """The session's detector (server settings), Paused after MIN_SPAN, never closing inside a turn."""
    cfg = cfg or ServerSettings()
    return DetectorConfig(energy_threshold=cfg.energy_threshold, min_speech_duration=cfg.min_speech_duration,
                          pause_duration=MIN_SPAN, max_silence_duration=TAIL + 5, max_recording_duration=120.0)


def label_spans(turn: Turn, cfg: ServerSettings | None = None) -> None:
    """The silences the session's detector finds, labelled; the last one (the tail) is the end."""
    dcfg = detector_config(cfg)
    det = AudioSpeechDetector(dcfg)
    spans: list[list] = []
    for i in range(0, len(turn.audio), 320):
        for ev in det.push(turn.audio[i : i + 320]):
            if isinstance(ev, SpeechPaused):
                spans.append([ev.t, None])
            elif isinstance(ev, SpeechResumed) and spans and spans[-1][1] is None:
                spans[-1][1] = round(ev.t - dcfg.min_speech_duration - spans[-1][0], 3)
            elif isinstance(ev, SpeechStarted) and not turn.onset:
                turn.onset = ev.t
    out = []
    for k, (start, dur) in enumerate(spans):
        if dur is None and k < len(spans) - 1:
            continue  # cannot happen: a pause either resumes or is the tail
        if dur is None:
            kind = "end"
        else:
            near = [kd for at, kd in turn.inserted if abs(at - start) < 0.25]
            kind = near[0] if near else "natural"
        out.append(Span(round(start, 3), dur, kind))
    turn.spans = [s for s in out if s.end or s.duration >= MIN_SPAN]  # type: ignore[operator]


def main() -> None:
    turns = build_turns()
    for t in turns:
        kinds = " ".join(f"{s.kind}:{s.duration if s.duration is not None else '-'}" for s in t.spans)
        print(f"{t.id:28s} {t.split:7s} {len(t.audio) / RATE:5.1f}s {'+'.join(t.clips)[:60]:60s} {kinds}")
    for split in ("train", "heldout"):
        sel = [s for t in turns if t.split == split for s in t.spans]
        holds = [s for s in sel if not s.end]
        print(f"{split}: {sum(t.split == split for t in turns)} turns, {len(sel)} silences: {len(sel) - len(holds)} end, "
              f"{len(holds)} hold ({', '.join(f'{k} {sum(s.kind == k for s in holds)}' for k in ('join', 'cut', 'natural'))})")


if __name__ == "__main__":
    main()
