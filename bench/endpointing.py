"""End-of-turn cues, measured one by one and in combination, at every pause people make.

    python bench/endpointing.py                       # starts the system, reads the cues, prints the tables
    python bench/endpointing.py --no-start            # services already running (base port 8000)
    python bench/endpointing.py --from bench/results/endpointing.jsonl   # tables only, from saved cues

Every utterance of the speech sets (bench/speech_sets.py: plain, long, unfinished) goes
through the session's own speech detector in 20 ms frames. Each `SpeechPaused` (150 ms
of silence) is a point where the server speculates; it is labelled by what the speaker
did next: the real end of the utterance, or an inner pause of a measured length after
which they went on. At each point the three cues are read from the running services,
exactly as a session reads them: the words (batch STT of the utterance so far,
`reads_complete`), the language model's P(end of turn) for that transcript after the
agent's system prompt, and Smart Turn's P(finished) on the last 8 s.

For each policy (which cues, which thresholds, which silence each verdict waits; a
single cue or a fixed set of cues answers after 450 ms when they say finished and
waits the long 2.5 s otherwise, so each row shows what that evidence alone can
separate) the table gives, at the real ends, the silence the turn waits (p50 / p90: the floor under
the latency, the pipeline adds what it has not finished by then) and, at inner pauses,
how many would have been answered before the speaker went on (waited less than the
pause), by pause length. The cues are read once; policies are compared on the same
points, so the comparison is not noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.speech_sets import NAMES, Utterance, build, pct  # noqa: E402
from services.server.agents import AgentBook  # noqa: E402
from services.server.endpointing import reads_complete  # noqa: E402
from services.server.session import make_detector  # noqa: E402
from shared.clients import ChatClient, SttClient  # noqa: E402
from shared.config import ServerSettings  # noqa: E402
from shared.speech_detector import SpeechPaused, SpeechResumed, UtteranceEnded  # noqa: E402
from tests.conftest import start_system, stop_system, system_env, wait_ready  # noqa: E402

FRAME = 320
LEAD, TAIL = 0.5, 3.0  # s of silence streamed before and after each utterance
OUT = ROOT / "bench" / "results" / "endpointing.jsonl"


def pause_points(u: Utterance, cfg: ServerSettings) -> list[dict]:
    """Where the session would speculate, with the audio so far and what came next."""
    det, _ = make_detector(cfg)
    pcm = np.concatenate([np.zeros(int(LEAD * 16000), np.int16), u.audio, np.zeros(int(TAIL * 16000), np.int16)])
    x = pcm.astype(np.float32) / 32768
    points: list[dict] = []
    open_point: dict | None = None
    for i in range(0, len(x), FRAME):
        for ev in det.push(x[i : i + FRAME]):
            if isinstance(ev, SpeechPaused):
                open_point = {"t": ev.t, "audio": ev.audio}
                points.append(open_point)
            elif isinstance(ev, SpeechResumed) and open_point is not None:
                # resumed needs min_speech of voice after the silence: the pause ended that much earlier
                open_point["pause"] = round(ev.t - cfg.min_speech_duration - open_point["t"], 3)
                open_point = None
            elif isinstance(ev, UtteranceEnded):
                open_point = None
    for p in points:
        p["end"] = "pause" not in p
    return points


@dataclass
class Cues:
    text: str
    lm: float | None
    sound: float | None


async def read_cues(audio: np.ndarray, stt: SttClient, chat: ChatClient, system: str) -> Cues:
    text = await stt.transcribe(audio)
    sound = await stt.end_of_turn(audio)
    lm: list[float] = []
    if text:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        async for _ in chat.stream(messages, lm.append, max_tokens=1, temperature=0.0):
            pass
    return Cues(text, lm[0] if lm else None, sound)


async def collect(sets: dict[str, list[Utterance]], urls: dict[str, str], out: Path) -> list[dict]:
    cfg = ServerSettings()
    system = AgentBook.load(cfg.agents_file).get("assistant").systemPrompt
    rows: list[dict] = []
    async with httpx.AsyncClient(timeout=60) as http:
        stt, chat = SttClient(http, urls["stt"]), ChatClient(http, urls["chat"])
        with out.open("w") as f:
            for name, utts in sets.items():
                for u in utts:
                    for k, p in enumerate(pause_points(u, cfg)):
                        c = await read_cues(p["audio"], stt, chat, system)
                        row = {"set": name, "id": u.id, "k": k, "end": p["end"], "pause": p.get("pause"),
                               "text": c.text, "words": reads_complete(c.text), "lm": c.lm, "sound": c.sound}
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        print(f"  [{name}] {u.id[:40]:40s} #{k} {'END  ' if p['end'] else 'pause':5s} "
                              f"{p.get('pause') or 0:5.2f}s words={row['words']!s:5s} lm={c.lm or 0:.2f} "
                              f"sound={c.sound or 0:.2f} | {c.text[-60:]}", flush=True)
    return rows


# --------------------------------------------------------------------------- policies

Policy = Callable[[dict], float]  # a pause point's cues -> seconds of silence that end the turn


def current(cfg: ServerSettings) -> Policy:
    """The server's judge(), on the recorded cues."""
    from types import SimpleNamespace

    from services.server.endpointing import judge

    waits = {"sure": cfg.sure_silence, "finished": cfg.confirm_silence, "unsure": cfg.max_silence_duration,
             "unfinished": max(cfg.max_silence_duration, cfg.unfinished_max_silence)}

    def wait(r: dict) -> float:
        turn = SimpleNamespace(transcript=r["text"], end_of_turn=r["lm"], sounds_finished=r["sound"])
        return waits[judge(turn, cfg)]  # type: ignore[arg-type]

    return wait


def policies() -> dict[str, Policy]:
    cfg = ServerSettings()
    lm_ok = lambda r, th=cfg.end_of_turn_threshold: r["lm"] is None or r["lm"] >= th  # noqa: E731
    snd = lambda r: r["sound"] if r["sound"] is not None else 0.5  # noqa: E731
    fast, slow = cfg.confirm_silence, cfg.unfinished_max_silence  # one cue or a fixed set: finished, or wait long
    return {
        "silence only (0.9 s)": lambda r: 0.9,
        "words": lambda r: fast if r["words"] else slow,
        "language model": lambda r: fast if lm_ok(r) else slow,
        "sound (Smart Turn >= 0.5)": lambda r: fast if snd(r) >= 0.5 else slow,
        "words + language model": lambda r: fast if r["words"] and lm_ok(r) else slow,
        "words + sound": lambda r: fast if r["words"] and snd(r) >= 0.5 else slow,
        "all three agree": lambda r: fast if r["words"] and lm_ok(r) and snd(r) >= 0.5 else slow,
        "judge(), sound may overrule the LM (before)": current(ServerSettings(end_of_turn_clear=1.0, end_of_turn_unlikely=0.0)),
        "judge() (450/450/900/2500 ms)": current(cfg),
        "judge(), SERVER_END_OF_TURN_UNLIKELY=0.05": current(ServerSettings(end_of_turn_unlikely=0.05)),
    }


def evaluate(rows: list[dict], policy: Policy) -> dict:
    ends = [policy(r) for r in rows if r["end"]]
    inner = [(r["pause"], policy(r)) for r in rows if not r["end"]]
    early = lambda lo, hi: sum(1 for p, w in inner if lo <= p < hi and w < p)  # noqa: E731
    count = lambda lo, hi: sum(1 for p, _ in inner if lo <= p < hi)  # noqa: E731
    return {"end_p50": statistics.median(ends) if ends else float("nan"), "end_p90": pct(ends, 0.9) if ends else float("nan"),
            "early_short": (early(0, 1.0), count(0, 1.0)), "early_long": (early(1.0, 99), count(1.0, 99)),
            "ends_fast": sum(1 for w in ends if w <= 0.5) / max(1, len(ends))}


def frac(pair: tuple[int, int]) -> str:
    return f"{pair[0]}/{pair[1]}"


def report(rows: list[dict]) -> None:
    by_set = {name: [r for r in rows if r["set"] == name] for name in dict.fromkeys(r["set"] for r in rows)}
    print("\ncue values (p50) at real ends vs inner pauses:")
    for name, rs in by_set.items():
        for kind, sel in (("ends", [r for r in rs if r["end"]]), ("inner pauses", [r for r in rs if not r["end"]])):
            if sel:
                lm = [r["lm"] for r in sel if r["lm"] is not None]
                sound = [r["sound"] for r in sel if r["sound"] is not None]
                print(f"  {name:11s} {kind:12s} n={len(sel):3d}  words finished {sum(r['words'] for r in sel) / len(sel):4.0%}  "
                      f"LM p50 {statistics.median(lm) if lm else float('nan'):.2f}  Smart Turn p50 "
                      f"{statistics.median(sound) if sound else float('nan'):.2f}")
    print("\nper policy: silence waited at the real ends (s), and inner pauses answered before the speaker went on")
    print(f"{'policy':44s} {'set':11s} {'end wait p50':>12s} {'p90':>5s} {'ends <=0.5 s':>12s} {'early, pause <1 s':>17s} {'early, 1-2 s':>12s}")
    for pname, policy in policies().items():
        for name, rs in by_set.items():
            e = evaluate(rs, policy)
            print(f"{pname[:44]:44s} {name:11s} {e['end_p50']:12.2f} {e['end_p90']:5.2f} {e['ends_fast']:12.0%} "
                  f"{frac(e['early_short']):>17s} {frac(e['early_long']):>12s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(NAMES))
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    ap.add_argument("--no-start", action="store_true")
    ap.add_argument("--base-port", type=int, default=8000)
    ap.add_argument("--from", dest="source", help="read saved cues (JSONL) instead of running the services")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.source:
        rows = [json.loads(line) for line in Path(args.source).read_text().splitlines() if line.strip()]
    else:
        sets = build([s for s in args.sets.split(",") if s], args.limit)
        env = system_env(args.base_port)
        urls = {n: f"http://127.0.0.1:{env[f'{n.upper()}_PORT']}" for n in ("server", "stt", "chat", "tts")}
        proc = None
        if args.no_start:
            for name in ("stt", "chat"):
                wait_ready(urls[name], 10)
        else:
            proc, urls = start_system(env, ROOT / "bench" / "results" / "launcher.log", 300)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            rows = asyncio.run(collect(sets, urls, out))
        finally:
            if proc is not None:
                stop_system(proc)
        print(f"wrote {out}")
    report(rows)


if __name__ == "__main__":
    main()
