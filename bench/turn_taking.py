"""Turn-taking benchmark: pauses inside one thought, and barge-in timing, per speech set.

    python bench/turn_taking.py                           # starts the system once per configuration
    python bench/turn_taking.py --clips 6                 # the plain pause grid over the 6 longest clips
    python bench/turn_taking.py --sets unfinished --limit 8 --configs default --barge-in 0
    python bench/turn_taking.py --no-start --base-port 8000   # services already running (default policy only)

1. Pauses, per set (bench/speech_sets.py):
   - plain: corpus clips with their quietest mid-clip gap replaced by a pause of
     0.3-0.85 s (under the 0.9 s silence limit), so each stream is one thought;
   - long: 2-4 clips of one speaker joined into 6-15 s with 150-400 ms pauses;
   - unfinished: a 1-2 s pause inside an unfinished sentence, which then continues.
   A reply whose audio arrives before the stream's last voiced frame was sent started
   before the speaker finished ("early"). "One turn": exactly one transcript is left
   once those a later transcript `replaces` are dropped, and it covers the utterance
   (WER against the whole reference <= 35%). Latency p50 is over the non-early answers.
   The "silence only" configuration (no early end of turn: every answer waits for the
   full silence limit) shows the latency cost of the default policy.
   For each early reply: how long we talked over the speaker, from their going on (the
   first voiced frame after our early audio arrived) to its `interrupted`.
2. Barge-in: a clip, then, as soon as its answer's first audio arrives (and again 3 s into it),
   a second clip.
   Reports the time from the second clip's first voiced frame to `interrupted` (p50, p90)
   and to the last audio chunk of the old turn received.
3. False interruptions (`--false-barge N`): "Yeah." (our TTS) or a 0.4 s cough-like burst
   1 s into a reply: paused (`interrupted`), resumed (`resumed`), or lost (interrupted and
   never resumed); the gap between the two, and whether the sound became a turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.speech_sets import NAMES, Utterance, answer_latency, build, final_transcripts, one_turn  # noqa: E402
from testing.session_client import stream_pcm  # noqa: E402
from tests.conftest import load_corpus, start_system, stop_system, system_env, wait_ready  # noqa: E402

CONFIGS = {"default": {}, "silence only": {"SERVER_CONFIRM_SILENCE": "0.9"}}
LONG_REPLIES = "A chatty voice assistant who always answers in four or five long spoken sentences."
# talk-over this long after the answer's first audio: at once (the user going on after an answer
# given before the detector closed their utterance), and once the utterance closed (up to 2.5 s)
BARGE_AFTER = (0.0, 3.0)


def false_sounds(tts: str) -> dict[str, np.ndarray]:
    """Sounds over our reply that must not take the turn: "Yeah." in our own TTS voice, and a cough-like burst."""
    from testing.audio import cough, synthesized
    from tests.conftest import at_level

    return {"yeah": at_level(synthesized(tts, "Yeah."), -20.0), "cough": cough()}


def voiced_frames(pcm: np.ndarray, floor_db: float = 35.0) -> np.ndarray:
    """Indices of the 20 ms frames within `floor_db` of the loudest."""
    f = pcm[: len(pcm) // 320 * 320].astype(np.float32).reshape(-1, 320) / 32768
    db = 10 * np.log10((f**2).mean(1) + 1e-12)
    return np.nonzero(db > db.max() - floor_db)[0]


def talked_over_ms(res, audio: np.ndarray, lead: float = 0.5) -> list[float]:  # noqa: ANN001
    """For each turn whose audio began before the speaker finished and was then cut: ms from
    the speaker going on (their first voiced frame after our audio arrived) to `interrupted`."""
    if res.speech_end is None:
        return []
    voiced = voiced_frames(audio)
    t0 = res.speech_end - (lead + (voiced[-1] + 1) * 0.02)  # when the stream began
    out = []
    for cut in (e for e in res.events if e.type == "interrupted"):
        tid = cut.msg["turn_id"]
        first = min((e.t for e in res.events if e.type == "tts_stream" and e.msg["data"]["turn_id"] == tid), default=None)
        if first is None or first >= res.speech_end:
            continue
        after = voiced[voiced * 0.02 > first - t0 - lead]
        went_on = t0 + lead + after[0] * 0.02 if len(after) else first
        out.append((cut.t - max(went_on, first)) * 1000)
    return out


async def pauses(ws: str, name: str, utts: list[Utterance]) -> list[dict]:
    rows = []
    for u in utts:
        res = await stream_pcm(ws + uuid.uuid4().hex, u.audio)
        lat = answer_latency(res)
        row = {"id": u.id, "pause": u.pauses[0] if name != "long" else None, "pauses": list(u.pauses),
               "early": res.early_audio > 0, "transcripts": len(res.transcripts), "turns": len(final_transcripts(res)),
               "one_turn": one_turn(res, u.reference), "merged": sum(m.get("replaces") is not None for m in res.of("transcript")),
               "latency_ms": None if lat is None else lat * 1000, "ref": u.reference, "talked_over_ms": talked_over_ms(res, u.audio),
               "final": [t for _, t in final_transcripts(res)]}
        rows.append(row)
        print(f"  [{name}] {u.id[:48]:48s} pauses {','.join(f'{p:.2f}' for p in u.pauses):15s} one turn {row['one_turn']!s:5s} "
              f"(transcripts {row['transcripts']}, replaces {row['merged']})  early {row['early']!s:5s}  "
              f"latency {row['latency_ms'] if row['latency_ms'] is not None else float('nan'):5.0f} ms", flush=True)
    return rows


async def barge_in(ws: str, first: np.ndarray, second: np.ndarray, after: float = 0.0) -> dict:
    """`second` starts `after` s after the answer's first audio arrived (0: at once, mostly over an
    answer given before the detector closed the first utterance: the user going on)."""
    events: list[tuple[float, dict]] = []
    async with websockets.connect(ws + uuid.uuid4().hex, max_size=2**24) as sock:
        await sock.send(json.dumps({"agentId": "assistant", "userId": "bench", "agentName": "Bench", "systemPrompt": LONG_REPLIES}))

        async def read() -> None:
            async for raw in sock:
                events.append((time.perf_counter(), json.loads(raw)))

        reader = asyncio.create_task(read())

        async def speak(pcm: np.ndarray) -> float:
            t0 = time.perf_counter()
            for k in range(0, len(pcm), 320):
                await asyncio.sleep(max(0.0, t0 + k / 16000 - time.perf_counter()))
                await sock.send(pcm[k : k + 320].tobytes())
            return t0

        def answered() -> bool:
            return any(m["type"] == "tts_stream" for _, m in events)

        await speak(np.concatenate([np.zeros(8000, np.int16), first]))
        t_wait = time.perf_counter()
        while not answered() and time.perf_counter() - t_wait < 15:
            await speak(np.zeros(1600, np.int16))
        if after:
            await speak(np.zeros(int(after * 16000), np.int16))
        t_onset = await speak(np.concatenate([second, np.zeros(16000 * 3, np.int16)])) + voiced_frames(second)[0] * 0.02
        reader.cancel()
    cut = [(t, m) for t, m in events if m["type"] == "interrupted"]
    if not cut:  # the answer had ended before the user spoke
        return {"after_s": after, "to_interrupted_ms": None, "reply_s": sum(len(m["data"]["chunk"]) * 3 // 16 for _, m in events
                                                                           if m["type"] == "tts_stream") / 24000}
    old = cut[0][1]["turn_id"]
    last_old = max(t for t, m in events if m["type"] == "tts_stream" and m["data"]["turn_id"] == old)
    return {"after_s": after, "to_interrupted_ms": (cut[0][0] - t_onset) * 1000, "to_last_old_audio_ms": (last_old - t_onset) * 1000,
            "old_audio_after_interrupted": sum(1 for t, m in events if m["type"] == "tts_stream" and m["data"]["turn_id"] == old and t > cut[0][0])}


async def false_barge(ws: str, first: np.ndarray, sound: np.ndarray, after: float = 1.0) -> dict:
    """A reply, then `sound` (not words that take the turn) `after` s into it."""
    res = await stream_pcm(ws + uuid.uuid4().hex, first, tail=12.0, barge=(sound, after),
                           init={"agentId": "assistant", "userId": "bench", "agentName": "Bench", "systemPrompt": LONG_REPLIES})
    cut = [e for e in res.events if e.type == "interrupted" and e.msg["turn_id"] == 1]
    back = [e for e in res.events if e.type == "resumed" and e.msg["turn_id"] == 1]
    return {"reply_s": res.audio_seconds(1), "paused": bool(cut), "resumed": bool(back), "lost": bool(cut) and not back,
            "gap_ms": (back[0].t - cut[0].t) * 1000 if cut and back else None, "turns": len(res.transcripts)}


def summary(rows: list[dict]) -> list[str]:
    """One line per inner pause (the long set, whose pauses vary inside an utterance: one line)."""
    out = [f"{'pause':>10s} {'early':>7s} {'one turn':>9s} {'p50 ms':>7s}"]
    keys = sorted({r["pause"] for r in rows}, key=lambda p: -1.0 if p is None else p)
    for p in keys:
        r = [x for x in rows if x["pause"] == p]
        lat = [x["latency_ms"] for x in r if x["latency_ms"] is not None and not x["early"]]
        label = "0.15-0.40" if p is None else f"{p:.2f}"
        out.append(f"{label:>10s} {sum(x['early'] for x in r):3d}/{len(r):<3d} {sum(x['one_turn'] for x in r):5d}/{len(r):<3d} "
                   f"{statistics.median(lat) if lat else float('nan'):7.0f}")
    if len(keys) > 1:
        lat = [x["latency_ms"] for x in rows if x["latency_ms"] is not None and not x["early"]]
        out.append(f"{'all':>10s} {sum(x['early'] for x in rows):3d}/{len(rows):<3d} {sum(x['one_turn'] for x in rows):5d}/{len(rows):<3d} "
                   f"{statistics.median(lat) if lat else float('nan'):7.0f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(NAMES), help=f"comma-separated, of {', '.join(NAMES)}")
    ap.add_argument("--clips", type=int, default=8, help="plain set: the pause grid over the longest N corpus clips")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--barge-in", type=int, default=6, help="barge-in runs (default configuration); 0 = none")
    ap.add_argument("--false-barge", type=int, default=0, help="runs of each false interruption (yeah, cough); 0 = none")
    ap.add_argument("--no-start", action="store_true", help="use services already running at --base-port (their own policy)")
    ap.add_argument("--base-port", type=int, default=8100, help="server port; stt, chat, tts on the next three")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "turn_taking.json"))
    args = ap.parse_args()
    sets = build([s for s in args.sets.split(",") if s], args.limit, grid_clips=args.clips)
    configs = ["default"] if args.no_start else [c for c in args.configs.split(",") if c]
    corpus = sorted(load_corpus(), key=lambda c: -len(c.audio))
    out: dict = {}
    for name in configs:
        print(f"configuration: {name} {CONFIGS[name]}", flush=True)
        env = {**system_env(args.base_port), **CONFIGS[name]}
        proc = None
        if args.no_start:
            urls = {n: f"http://127.0.0.1:{env[f'{n.upper()}_PORT']}" for n in ("server", "stt", "chat", "tts")}
            for u in urls.values():
                wait_ready(u, 10)
        else:
            proc, urls = start_system(env, ROOT / "bench" / "results" / "turn_taking_launcher.log", 300)
        ws = urls["server"].replace("http://", "ws://") + "/ws/"
        try:
            out[name] = {s: asyncio.run(pauses(ws, s, utts)) for s, utts in sets.items()}
            if name == "default" and args.barge_in:
                pairs = [(corpus[i], corpus[i + 1]) for i in range(0, min(len(corpus) - 1, 2 * args.barge_in), 2)]
                out[name]["barge_in"] = [asyncio.run(barge_in(ws, a.audio, c.audio, after)) for after in BARGE_AFTER for a, c in pairs]
            if name == "default" and args.false_barge:
                out[name]["false_barge"] = {kind: [asyncio.run(false_barge(ws, corpus[k].audio, sound)) for k in range(args.false_barge)]
                                            for kind, sound in false_sounds(urls["tts"]).items()}
        finally:
            if proc is not None:
                stop_system(proc)
    for name in configs:
        for s in sets:
            print(f"\n{name}, set {s}: replies started before the speaker finished, by inner pause")
            print("\n".join(summary(out[name][s])))
        over = [ms for s in sets for r in out[name][s] for ms in r["talked_over_ms"]]
        if over:
            print(f"\n{name}: early replies the speaker went on over: {len(over)}, stopped after p50 {statistics.median(over):.0f} ms, "
                  f"max {max(over):.0f} ms of talking over them")
    for kind, runs in out.get("default", {}).get("false_barge", {}).items():
        gaps = [r["gap_ms"] for r in runs if r["gap_ms"] is not None]
        print(f"\nfalse interruption '{kind}' ({len(runs)} runs): paused {sum(r['paused'] for r in runs)}, resumed "
              f"{sum(r['resumed'] for r in runs)}, lost {sum(r['lost'] for r in runs)}, became a turn {sum(r['turns'] > 1 for r in runs)}; "
              f"gap p50 {statistics.median(gaps) if gaps else float('nan'):.0f} ms")
    for after in BARGE_AFTER:
        runs = [b for b in out.get("default", {}).get("barge_in", []) if b["after_s"] == after]
        bi = [b for b in runs if b["to_interrupted_ms"] is not None]
        if not bi:
            continue
        lat = sorted(b["to_interrupted_ms"] for b in bi)
        print(f"\nbarge-in {after:.0f} s into the reply ({len(runs)} runs, {len(runs) - len(bi)} ended first): first voiced frame of the user's speech -> interrupted p50 {statistics.median(lat):.0f} ms, "
              f"p90 {lat[int(0.9 * (len(lat) - 1))]:.0f} ms, "
              f"-> last old-turn audio chunk p50 {statistics.median(b['to_last_old_audio_ms'] for b in bi):.0f} ms "
              f"(max {max(b['to_last_old_audio_ms'] for b in bi):.0f}); old-turn chunks after interrupted: {sum(b['old_audio_after_interrupted'] for b in bi)}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
