"""End of turn measured as LiveKit's eot-bench measures it, on turns built from our corpus.

    python bench/eot.py                  # reads the cues (cached), sweeps every policy, prints the tables, writes the plot
    python bench/eot.py --fit            # ... and writes services/server/eot_weights.json (fitted on the training speakers)
    python bench/eot.py --cue-ready measured   # cues usable only once this machine had computed them (see below)

The set (bench/eot_data.py): turns of one speaker each, built from the corpus; every silence
of 100 ms or more is a decision point, labelled *end* (the last of the turn) or *hold* (the
speaker went on). Split by speaker: the last third of the sorted speaker ids is held out; no
threshold, weight or operating point is chosen on it.

Cues at each point, as a session has them, read in-process (no services started) once and
cached in bench/results/eot_cache/cues.json (delete it to read them again):
- the transcript: the STT engine (faster-whisper, bundled tiny.en) on the utterance so far,
  from its onset (with the detector's 0.3 s pre-roll) to 150 ms into the silence (the
  session speculates at SERVER_PAUSE_DURATION = 0.15 s); the words cue is `reads_complete`;
- Whisper's own P(sentence end): its probability of ". ? !" right after the last word, from
  the same decode (`Transcript.sentence_end`, as the session's live STT final carries it);
- the language model's P(end of turn) for that transcript after the assistant's system
  prompt (the chat engine's `end_of_turn`, one reading);
- Smart Turn v3.2's P(finished) on the last 8 s, read at 0.15 s of silence (the session's
  one reading) and again at 0.3, 0.5, 0.8, 1.2 and 2.0 s while the silence lasts (eot-bench
  scores audio models on a grid as the silence grows: "Smart Turn, re-read");
- speaking rate (words per second of the turn so far) and the silence so far.
By default a cue read at the pause is usable from 0.15 s (eot-bench's smallest action delay
is 0.2 s, so no policy is held by it); `--cue-ready measured` makes each cue usable only
0.15 s + the time this machine took to compute it (STT then LM; Smart Turn alongside).

Policies, each swept (eot-bench's grid: threshold 0-0.99 by 0.01, plus finer steps near 0
and 1 where P(end) readings bunch; action delay 0.2-0.9 s by 0.1; timeout 1.0-3.5 s by 0.5):
- silence only: the turn ends after T s of silence (T 0.1-3.5 s by 0.05);
- Smart Turn alone (the session's one reading; and re-read as the silence grows);
- language-model P(end) alone; Whisper's P(sentence end) alone;
- the project's policy: endpointing.judge() with the server's thresholds, each verdict's
  wait swept (sure <= finished in 0.2-0.9 s, unsure 0.5-2.0 s, unfinished 1.0-3.5 s), and
  its default (450 / 450 / 900 / 2500 ms) as one point;
- the learned logistic model (services/server/eot_model.py), fitted on the training
  speakers; its shipped operating point is chosen on the training speakers' out-of-fold
  predictions (leave one speaker out), the lowest mean latency at <= 5% cut-off.

Metrics, eot-bench's: false cut-off rate = share of hold silences (scored when 0.2-5.0 s
long, as eot-bench's min/max hold-span duration) where the policy fired before the speaker
went on; latency = for each end, the silence until the policy fired (the timeout when it did
not); mean over the ends. Reported: the lowest cut-off rate at a mean latency <= 300 / 600 ms,
the lowest mean latency at a cut-off rate <= 5% / 10%, and the Pareto frontier, as a table
and as a PNG (bench/results/eot_pareto.png, with matplotlib from requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.eot_data import CACHE, RATE, Turn, build_turns  # noqa: E402
from services.server.endpointing import judge, reads_complete  # noqa: E402
from services.server.eot_model import FEATURES, WEIGHTS, EotCues, vector  # noqa: E402
from shared.config import ServerSettings  # noqa: E402

PAUSE = 0.15  # s of silence at which the session speculates (reads the cues)
PRE_ROLL = 0.3
SOUND_TIMES = (0.15, 0.3, 0.5, 0.8, 1.2, 2.0)  # s into the silence: Smart Turn readings
HOLD_SCORED = (0.2, 5.0)  # eot-bench's min/max hold-span duration
TGRID = np.round(np.arange(0.2, 3.5001, 0.05), 3)  # decision times (s of silence)
THRESHOLDS = np.unique(np.round(np.concatenate([
    np.arange(0, 1.0, 0.01), np.geomspace(1e-4, 0.01, 9), 1 - np.geomspace(1e-4, 0.01, 9)]), 6))
DELAYS = np.round(np.arange(0.2, 0.901, 0.1), 2)
TIMEOUTS = np.round(np.arange(1.0, 3.501, 0.5), 2)
SILENCE_T = np.round(np.arange(0.1, 3.5001, 0.05), 3)
L2 = 1.0  # ridge on the standardised weights
OUT = ROOT / "bench" / "results"

# eot-bench's published English figures (livekit/eot-bench README, validation split):
# (cut-off @ 300 ms, cut-off @ 600 ms, latency @ 5%, latency @ 10%); None: not reached
EOT_BENCH = {
    "LiveKit Turn Detector v1": (0.099, 0.045, 543, 295),
    "Deepgram Flux": (0.129, 0.099, 1151, 548),
    "Smart Turn v3.2": (0.352, 0.148, 1051, 739),
    "OpenAI GPT Realtime 2": (None, None, 1143, 824),
    "VAD baseline (silence only)": (0.556, 0.217, 1600, 1000),
}


# --------------------------------------------------------------------------- cues


def _key(turn: Turn, k: int) -> str:
    return f"{turn.id}#{k}@{zlib.crc32(turn.audio.tobytes()):08x}"


def _save(cache: Path, have: dict[str, dict]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(have))


def read_cues(turns: list[Turn], cache: Path) -> dict[str, dict]:
    """Every point's cues, from the cache where it has them (written as it goes)."""
    have: dict[str, dict] = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [(t, k) for t in turns for k in range(len(t.spans)) if "stop" not in have.get(_key(t, k), {})]  # older caches lack "stop"
    if todo:
        asyncio.run(_read_cues(todo, have, cache))
    return have


async def _read_cues(todo: list[tuple[Turn, int]], have: dict[str, dict], cache: Path) -> None:
    from services.chat.engines.base import ChatMessage
    from services.chat.engines.llama_cpp import LlamaCppEngine
    from services.server.agents import AgentBook
    from services.stt.engines.faster_whisper import FasterWhisperEngine
    from services.stt.turn_model import SmartTurn
    from shared.config import ChatSettings, SttSettings

    print(f"reading cues at {len(todo)} points (STT, language model, Smart Turn in-process)", flush=True)
    cfg = ServerSettings()
    system = AgentBook.load(cfg.agents_file).get("assistant").systemPrompt
    stt = FasterWhisperEngine(SttSettings())
    stt.load()
    sound = SmartTurn()
    lm = LlamaCppEngine(ChatSettings(parallel=1))
    await lm.load()
    t0, last = time.perf_counter(), None
    try:
        for n, (turn, k) in enumerate(todo):
            span = turn.spans[k]
            x = turn.audio.astype(np.float32) / 32768
            a = max(0, int((turn.onset - PRE_ROLL) * RATE))

            def upto(s: float, x: np.ndarray = x, a: int = a, start: float = span.start) -> np.ndarray:
                return x[a : int((start + s) * RATE)]

            audio = upto(min(PAUSE, span.duration or PAUSE))
            c0 = time.perf_counter()
            heard = stt.transcribe(audio)
            text = heard.text
            c1 = time.perf_counter()
            p_lm = None
            if text:
                msgs = [ChatMessage(role="system", content=system), ChatMessage(role="user", content=text)]
                p_lm = await lm.end_of_turn(msgs)
            c2 = time.perf_counter()
            sounds: dict[str, float] = {}
            t_sound = 0.0
            for s in SOUND_TIMES:
                if span.duration is not None and s >= span.duration:
                    break
                c3 = time.perf_counter()
                sounds[f"{s:.2f}"] = round(sound.probability(upto(s)), 5)
                t_sound = t_sound or time.perf_counter() - c3
            have[_key(turn, k)] = {
                "text": text, "lm": None if p_lm is None else round(p_lm, 6), "sounds": sounds,
                "stop": None if heard.sentence_end is None else round(heard.sentence_end, 6),
                "speech_s": round(span.start - turn.onset, 3), "t_stt": round(c1 - c0, 4), "t_lm": round(c2 - c1, 4),
                "t_sound": round(t_sound, 4),
            }
            if last != turn.id or n == len(todo) - 1:
                _save(cache, have)
                last = turn.id
            if n % 25 == 0:
                el = time.perf_counter() - t0
                print(f"  {n + 1}/{len(todo)} {el:5.0f} s  {turn.id} #{k} {span.kind:7s} lm={p_lm if p_lm is not None else float('nan'):.3f} "
                      f"sound={sounds.get('0.15', float('nan')):.2f} | {text[-50:]}", flush=True)
    finally:
        lm.close()
        _save(cache, have)


@dataclass
class Points:
    """Every decision point of one split, as arrays."""

    rows: list[dict]
    end: np.ndarray  # bool
    dur: np.ndarray  # s of silence before the speaker went on (inf at ends)
    scored_hold: np.ndarray  # bool: a hold of 0.2-5.0 s
    ready_text: np.ndarray  # s of silence from which the transcript cues are usable
    ready_sound: np.ndarray

    @property
    def n_end(self) -> int:
        return int(self.end.sum())

    @property
    def n_hold(self) -> int:
        return int(self.scored_hold.sum())

    def cue(self, key: str) -> np.ndarray:
        """One cue at every point (NaN where it is missing)."""
        return np.array([np.nan if r[key] is None else r[key] for r in self.rows], dtype=float)

    def sound_at(self, t: float) -> np.ndarray:
        """The latest Smart Turn reading made by `t` s of silence (NaN: none)."""
        out = np.full(len(self.rows), np.nan)
        for i, r in enumerate(self.rows):
            got = [p for s, p in r["sounds"].items() if float(s) <= t + 1e-9]
            if got:
                out[i] = got[-1]
        return out


def points(turns: list[Turn], cues: dict[str, dict], split: str, cue_ready: str) -> Points:
    rows = []
    for t in turns:
        if t.split != split:
            continue
        for k, s in enumerate(t.spans):
            c = cues[_key(t, k)]
            rows.append({"turn": t.id, "speaker": t.speaker, "k": k, "kind": s.kind, "end": s.end, "dur": s.duration, **c,
                         "sound": c["sounds"].get(f"{PAUSE:.2f}"), "words": reads_complete(c["text"])})
    end = np.array([r["end"] for r in rows])
    dur = np.array([np.inf if r["dur"] is None else r["dur"] for r in rows])
    scored = ~end & (dur >= HOLD_SCORED[0]) & (dur <= HOLD_SCORED[1])
    if cue_ready == "measured":
        rt = np.array([PAUSE + r["t_stt"] + r["t_lm"] for r in rows])
        rs = np.array([PAUSE + r["t_sound"] for r in rows])
    else:
        rt = rs = np.full(len(rows), float(cue_ready) if cue_ready != "pause" else PAUSE)
    return Points(rows, end, dur, scored, rt, rs)


# --------------------------------------------------------------------------- policies


@dataclass
class Sweep:
    """A policy's operating points: for each parameter set, when it fires at every point."""

    name: str
    params: list[tuple]  # one per row of `fire`
    fire: np.ndarray  # [params, points] s of silence at which the turn ends

    def metrics(self, p: Points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cut-off rate, mean latency s, share of ends the cue caught before the timeout) per parameter set."""
        cut = (self.fire[:, p.scored_hold] < p.dur[p.scored_hold]).mean(1)
        lat = self.fire[:, p.end].mean(1)
        timeout = np.array([pp[-1] if isinstance(pp[-1], float) else np.inf for pp in self.params])
        detect = (self.fire[:, p.end] < timeout[:, None] - 1e-9).mean(1)
        return cut, lat, detect


def first_crossing(prob: np.ndarray, ready: np.ndarray, name: str, label: Callable[[float, float, float], tuple] | None = None) -> Sweep:
    """prob[points, TGRID]: the policy fires at the first grid time >= its action delay (and >= when
    the cue is ready) at which prob >= threshold; else at the timeout."""
    prob = np.where(TGRID[None, :] >= ready[:, None] - 1e-9, np.nan_to_num(prob, nan=-1.0), -1.0)
    params, fires = [], []
    for d in DELAYS:
        i0 = int(np.searchsorted(TGRID, d - 1e-9))
        run = np.maximum.accumulate(prob[:, i0:], axis=1)  # [N, G]
        hit = run[:, None, :] >= THRESHOLDS[None, :, None]  # [N, K, G]
        idx = hit.argmax(axis=2)
        when = np.where(hit.any(axis=2), TGRID[i0:][idx], np.inf)  # [N, K]
        for j, th in enumerate(THRESHOLDS):
            for T in TIMEOUTS:
                params.append((float(th), float(d), float(T)))
                fires.append(np.minimum(when[:, j], T))
    return Sweep(name, params, np.array(fires))


def constant(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, None], len(TGRID), axis=1)


def silence_only(p: Points) -> Sweep:
    return Sweep("silence only", [(float(T),) for T in SILENCE_T], np.repeat(SILENCE_T[:, None], len(p.rows), axis=1).astype(float))


def smart_turn(p: Points, reread: bool) -> Sweep:
    if reread:
        prob = np.stack([p.sound_at(float(t)) for t in TGRID], axis=1)
        return first_crossing(prob, p.ready_sound, "Smart Turn v3.2, re-read")
    return first_crossing(constant(p.cue("sound")), p.ready_sound,
                          "Smart Turn v3.2 (one reading)")


def lm_alone(p: Points) -> Sweep:
    return first_crossing(constant(p.cue("lm")), p.ready_text,
                          "language model P(end)")


def whisper_alone(p: Points) -> Sweep:
    return first_crossing(constant(p.cue("stop")), p.ready_text,
                          "Whisper P(sentence end)")


def verdicts(p: Points, cfg: ServerSettings) -> list[str]:
    return [judge(SimpleNamespace(transcript=r["text"], end_of_turn=r["lm"], sounds_finished=r["sound"]), cfg)  # type: ignore[arg-type]
            for r in p.rows]


def project_policy(p: Points, cfg: ServerSettings, waits: Sequence[tuple[float, float, float, float]] | None = None,
                   name: str = "project policy (judge), waits swept") -> Sweep:
    """judge() verdicts with the server's thresholds; each verdict's silence swept. Before the
    cues are read (`ready`) a turn waits as "unsure" (the session's turn-taker does)."""
    v = verdicts(p, cfg)
    ready = np.maximum(p.ready_text, p.ready_sound)
    if waits is None:
        short = np.round(np.arange(0.2, 0.901, 0.05), 2)
        waits = [(float(a), float(b), float(u), float(f)) for a in short for b in short if b >= a
                 for u in np.round(np.arange(0.5, 2.001, 0.1), 2) if u >= b for f in TIMEOUTS if f >= u]
    order = {"sure": 0, "finished": 1, "unsure": 2, "unfinished": 3}
    vi = np.array([order[x] for x in v])
    W = np.array(waits)  # [P, 4]
    w = W[:, vi]  # [P, N]
    fire = np.minimum(W[:, [2]], np.maximum(w, ready[None, :]))
    return Sweep(name, [tuple(x) for x in waits], fire)


# --------------------------------------------------------------------------- the learned model


def design(p: Points, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows (point, t) for t in `times` while the point is still silent: X (raw, NaN = missing), y, point index, t."""
    X, y, idx, ts = [], [], [], []
    for i, r in enumerate(p.rows):
        cues = EotCues(r["text"], r["lm"], r["sound"], r["speech_s"], r["stop"])
        for t in times:
            if not r["end"] and t >= p.dur[i]:
                break
            X.append([np.nan if v is None else v for v in vector(cues, t * 1000)])
            y.append(1.0 if r["end"] else 0.0)
            idx.append(i)
            ts.append(t)
    return np.array(X, float), np.array(y), np.array(idx), np.array(ts)


def fit(X: np.ndarray, y: np.ndarray, l2: float = L2) -> dict:
    """Class-balanced L2 logistic regression (Newton's method) on standardised features."""
    seen = ~np.isnan(X).all(axis=0)  # a cue missing at every point contributes nothing
    mean = np.zeros(X.shape[1])
    mean[seen] = np.nanmean(X[:, seen], axis=0)
    Xf = np.where(np.isnan(X), mean, X)
    scale = Xf.std(axis=0)
    scale[scale < 1e-6] = 1.0
    Z = np.hstack([np.ones((len(X), 1)), (Xf - mean) / scale])
    sw = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * len(y)
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[0] = 0.0
    for _ in range(50):
        pr = 1 / (1 + np.exp(-(Z @ w)))
        g = Z.T @ (sw * (pr - y)) + reg * w
        H = (Z * (sw * pr * (1 - pr))[:, None]).T @ Z + np.diag(reg)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"features": list(FEATURES), "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
            "weights": w[1:].round(6).tolist(), "bias": round(float(w[0]), 6)}


def prob_grid(params: dict, p: Points) -> np.ndarray:
    """The model's P(end) at every point and TGRID time (NaN where the point had resumed: unused)."""
    X, _, idx, ts = design(p, TGRID)
    mean, scale = np.array(params["mean"]), np.array(params["scale"])
    Z = (np.where(np.isnan(X), mean, X) - mean) / scale
    pr = 1 / (1 + np.exp(-(params["bias"] + Z @ np.array(params["weights"]))))
    out = np.full((len(p.rows), len(TGRID)), np.nan)
    out[idx, np.searchsorted(TGRID, ts - 1e-9)] = pr
    # after a hold resumed the policy is not asked; fill so the running max is defined
    return np.where(np.isnan(out), -1.0, out)


def choose(sw: Sweep, p: Points, budget: float = 0.05) -> int:
    cut, lat, _ = sw.metrics(p)
    ok = np.nonzero(cut <= budget + 1e-12)[0]
    return int(ok[np.argmin(lat[ok])]) if len(ok) else int(np.argmin(cut))


def learned(train: Points, turns_train_speakers: list[str]) -> tuple[dict, Sweep]:
    """Fit on the training split; choose the operating point on out-of-fold (leave one speaker out) predictions."""
    X, y, idx, _ = design(train, TGRID)
    params = fit(X, y)
    speakers = np.array([train.rows[i]["speaker"] for i in idx])
    oof = np.full((len(train.rows), len(TGRID)), -1.0)
    for s in turns_train_speakers:
        m = speakers != s
        fold = fit(X[m], y[m])
        sel = [i for i, r in enumerate(train.rows) if r["speaker"] == s]
        sub = Points([train.rows[i] for i in sel], train.end[sel], train.dur[sel], train.scored_hold[sel],
                     train.ready_text[sel], train.ready_sound[sel])
        oof[sel] = prob_grid(fold, sub)
    ready = np.maximum(train.ready_text, train.ready_sound)
    sw = first_crossing(oof, ready, "learned (train, out-of-fold)")
    th, d, T = sw.params[choose(sw, train)]
    params.update({"threshold": th, "action_delay_ms": round(d * 1000), "timeout_ms": round(T * 1000)})
    return params, sw


def learned_sweep(params: dict, p: Points, name: str = "learned logistic model") -> Sweep:
    return first_crossing(prob_grid(params, p), np.maximum(p.ready_text, p.ready_sound), name)


def at_point(sw: Sweep, target: tuple, name: str) -> Sweep:
    i = min(range(len(sw.params)), key=lambda k: sum(abs(a - b) for a, b in zip(sw.params[k], target, strict=True)))
    return Sweep(name, [sw.params[i]], sw.fire[[i]])


# --------------------------------------------------------------------------- report


def operating_points(sw: Sweep, p: Points) -> dict:
    cut, lat, det = sw.metrics(p)

    def best_cut(max_lat: float) -> tuple[float, int] | None:
        ok = np.nonzero(lat <= max_lat + 1e-9)[0]
        return None if not len(ok) else (float(cut[ok].min()), int(ok[np.argmin(cut[ok])]))

    def best_lat(max_cut: float) -> tuple[float, int] | None:
        ok = np.nonzero(cut <= max_cut + 1e-9)[0]
        return None if not len(ok) else (float(lat[ok].min()), int(ok[np.argmin(lat[ok])]))

    return {"cut300": best_cut(0.3), "cut600": best_cut(0.6), "lat5": best_lat(0.05), "lat10": best_lat(0.10),
            "cut": cut, "lat": lat, "detect": det}


def pareto(cut: np.ndarray, lat: np.ndarray) -> list[tuple[float, float]]:
    """Non-dominated (latency s, cut-off rate) pairs, by latency."""
    out: list[tuple[float, float]] = []
    for i in np.lexsort((cut, lat)):
        if not out or cut[i] < out[-1][1] - 1e-12:
            out.append((float(lat[i]), float(cut[i])))
    return out


def fmt_params(params: tuple) -> str:
    if len(params) == 1:
        return f"T {params[0]:.2f}"
    if len(params) == 3:
        th, d, T = params
        return f"th {th:.4g} delay {d:.1f} T {T:.1f}"
    return "waits " + "/".join(f"{x * 1000:.0f}" for x in params)


def table(sweeps: list[Sweep], p: Points, split: str) -> list[str]:
    pc = lambda x: "-" if x is None else f"{x[0] * 100:5.1f}%"  # noqa: E731
    ms = lambda x: "-" if x is None else f"{x[0] * 1000:5.0f} ms"  # noqa: E731
    lines = [f"\n{split}: {p.n_hold} hold silences scored (0.2-5.0 s; {int((~p.end).sum()) - p.n_hold} shorter ones no "
             f"policy here can cut off), {p.n_end} ends, speakers {', '.join(sorted({r['speaker'] for r in p.rows}))}",
             f"{'policy':44s} {'cut-off @300ms':>14s} {'@600ms':>8s} {'latency @5%':>12s} {'@10%':>9s}   operating point @5% (mean latency, cut-off, ends caught)"]
    for sw in sweeps:
        o = operating_points(sw, p)
        if len(sw.params) == 1:
            c, la, de = o["cut"][0], o["lat"][0], o["detect"][0]
            lines.append(f"{sw.name[:44]:44s} {'one point:':>14s} {c * 100:7.1f}% cut-off at {la * 1000:4.0f} ms mean latency, "
                         f"ends caught by the cue {de * 100:3.0f}%   [{fmt_params(sw.params[0])}]")
            continue
        at = o["lat5"]
        where = (f"{fmt_params(sw.params[at[1]])}: {o['lat'][at[1]] * 1000:.0f} ms, {o['cut'][at[1]] * 100:.1f}%, "
                 f"{o['detect'][at[1]] * 100:.0f}%") if at else "-"
        lines.append(f"{sw.name[:44]:44s} {pc(o['cut300']):>14s} {pc(o['cut600']):>8s} {ms(o['lat5']):>12s} {ms(o['lat10']):>9s}   {where}")
    return lines


def context_lines() -> list[str]:
    lines = ["\neot-bench's published English figures (its own data set, validation split), for context:"]
    for name, (a, b, c, d) in EOT_BENCH.items():
        f = lambda x: "-" if x is None else f"{x * 100:5.1f}%"  # noqa: E731
        lines.append(f"{name[:44]:44s} {f(a):>14s} {f(b):>8s} {c:9.0f} ms {d:6.0f} ms")
    return lines


def by_kind(sw: Sweep, p: Points, i: int = 0) -> str:
    parts = []
    for kind in ("join", "cut", "natural"):
        m = p.scored_hold & np.array([r["kind"] == kind for r in p.rows])
        if m.any():
            parts.append(f"{kind} {int((sw.fire[i, m] < p.dur[m]).sum())}/{int(m.sum())}")
    return ", ".join(parts)


def auc(scores: np.ndarray, p: Points) -> float:
    pos, neg = scores[p.end], scores[p.scored_hold]
    pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


# --------------------------------------------------------------------------- the plot


def plot(curves: dict[str, list[tuple[float, float]]], points_: dict[str, tuple[float, float]], title: str, path: Path,
         context: bool = True) -> None:
    """The Pareto curves (cut-off rate against mean latency) as steps, single operating points as
    crosses, and eot-bench's published points (its data) as grey markers."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=100)
    for name, pts in curves.items():
        lat, cut = zip(*pts, strict=True) if pts else ((), ())
        ax.step([x * 1000 for x in lat], [c * 100 for c in cut], where="post", lw=2, label=name)
    for name, (lat, cut) in points_.items():
        ax.plot(lat * 1000, cut * 100, "kx", ms=9, mew=2)
        ax.annotate(name, (lat * 1000, cut * 100), xytext=(6, 6), textcoords="offset points")
    if context:
        markers = iter("os^Dv")
        for name, (a, b, c, d) in EOT_BENCH.items():
            pts = [(x, y) for x, y in ((300, a), (600, b), (c, 0.05), (d, 0.10)) if y is not None and x <= 2000]
            ax.plot([x for x, _ in pts], [y * 100 for _, y in pts], next(markers), color="grey", ms=6, ls="none",
                    label=f"eot-bench (its data): {name}")
    for x in (300, 600):
        ax.axvline(x, color="lightgrey", ls=":", zorder=0)
    for y in (5, 10):
        ax.axhline(y, color="lightgrey", ls=":", zorder=0)
    ax.set(xlim=(0, 2000), ylim=(0, 70), xlabel="mean latency at ends (ms)", ylabel="false cut-off rate (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help=f"write the fitted weights to {WEIGHTS.relative_to(ROOT)}")
    ap.add_argument("--cue-ready", default="pause", help="'pause' (0.15 s), 'measured', or seconds")
    ap.add_argument("--cache", default=str(CACHE / "cues.json"))
    ap.add_argument("--plot", default=str(OUT / "eot_pareto.png"))
    ap.add_argument("--json", default=str(OUT / "eot.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    turns = build_turns()
    cues = read_cues(turns, Path(args.cache))
    t_cues = time.perf_counter() - t0
    train, held = (points(turns, cues, s, args.cue_ready) for s in ("train", "heldout"))
    cfg = ServerSettings()
    train_speakers = sorted({r["speaker"] for r in train.rows})
    params, oof = learned(train, train_speakers)
    if args.fit:
        params["fitted_on"] = {"speakers": train_speakers, "points": len(train.rows), "ends": train.n_end,
                               "holds_scored": train.n_hold, "l2": L2, "by": "python bench/eot.py --fit"}
        WEIGHTS.write_text(json.dumps(params, indent=1) + "\n")
        print(f"wrote {WEIGHTS.relative_to(ROOT)}")
    shipped = json.loads(WEIGHTS.read_text()) if WEIGHTS.exists() else None
    default_waits = [(cfg.sure_silence, cfg.confirm_silence, cfg.max_silence_duration, max(cfg.max_silence_duration, cfg.unfinished_max_silence))]
    out: dict = {"cue_ready": args.cue_ready, "params": params}
    report: list[str] = []
    for split, p in (("held-out", held), ("train", train)):
        sweeps = [silence_only(p), smart_turn(p, reread=False), smart_turn(p, reread=True), lm_alone(p), whisper_alone(p),
                  project_policy(p, cfg)]
        sweeps.append(project_policy(p, cfg, default_waits, "project policy, defaults 450/450/900/2500"))
        fitted = learned_sweep(params, p) if split == "held-out" else Sweep("learned logistic model (out-of-fold)", oof.params, oof.fire)
        sweeps.append(fitted)
        point = (params["threshold"], params["action_delay_ms"] / 1000, params["timeout_ms"] / 1000)
        sweeps.append(at_point(fitted, point, "learned, shipped point (chosen on train)"))
        if shipped is not None and shipped != params and split == "held-out":
            sp = learned_sweep(shipped, p, "learned, eot_weights.json as shipped")
            sweeps.append(at_point(sp, (shipped["threshold"], shipped["action_delay_ms"] / 1000, shipped["timeout_ms"] / 1000),
                                   "eot_weights.json as shipped, its point"))
        report += table(sweeps, p, split)
        report.append("  cut-offs by hold kind: " + "; ".join(f"{sw.name.split(',')[0]}: {by_kind(sw, p)}" for sw in sweeps if len(sw.params) == 1))
        lm = p.cue("lm")
        snd = p.cue("sound")
        words = np.array([float(r["words"]) for r in p.rows])
        stop = p.cue("stop")
        pg = prob_grid(params, p)[:, 0]
        report.append(f"  AUC ends vs holds (at the pause): LM {auc(lm, p):.2f}, Smart Turn {auc(snd, p):.2f}, "
                      f"words {auc(words, p):.2f}, Whisper P(sentence end) {auc(stop, p):.2f}, learned at 0.2 s {auc(pg, p):.2f}; LM reading missing at "
                      f"{int(np.isnan(lm).sum())} points (empty transcript)")
        curves, marks = {}, {}
        for sw in sweeps:
            o = operating_points(sw, p)
            if len(sw.params) == 1:
                marks[sw.name.split(",")[0].replace("project policy", "project defaults")] = (float(o["lat"][0]), float(o["cut"][0]))
            else:
                curves[sw.name] = pareto(o["cut"], o["lat"])
                out.setdefault(split, {})[sw.name] = {
                    k: (None if o[k] is None else {"value": o[k][0], "params": sw.params[o[k][1]]})
                    for k in ("cut300", "cut600", "lat5", "lat10")} | {"pareto": curves[sw.name]}
        marks = {k: v for k, v in marks.items() if "as shipped" not in k}
        path = Path(args.plot) if split == "held-out" else Path(args.plot).with_name(Path(args.plot).stem + "_train.png")
        plot(curves, marks, f"End of turn, {split} speakers: false cut-offs against latency", path)
        report.append(f"  plot: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    report += context_lines()
    t_text = [r["t_stt"] for r in held.rows + train.rows]
    t_lm = [r["t_lm"] for r in held.rows + train.rows if r["lm"] is not None]
    report.append(f"\ncue compute on this machine (in-process, nice 10): STT p50 {statistics.median(t_text) * 1000:.0f} ms, "
                  f"LM p50 {statistics.median(t_lm) * 1000:.0f} ms, Smart Turn p50 "
                  f"{statistics.median([r['t_sound'] for r in held.rows + train.rows]) * 1000:.0f} ms; cues usable from: {args.cue_ready}")
    w = dict(zip(FEATURES, params["weights"], strict=True))
    report.append("learned weights (standardised): " + ", ".join(f"{k} {v:+.2f}" for k, v in w.items())
                  + f", bias {params['bias']:+.2f}; shipped point: threshold {params['threshold']:.4g}, "
                  f"delay {params['action_delay_ms']} ms, timeout {params['timeout_ms']} ms")
    report.append(f"({time.perf_counter() - t0:.0f} s, of which cues {t_cues:.0f} s)")
    print("\n".join(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
