"""Load benchmark (issue 11): N concurrent sessions through the real session protocol.

    python bench/load.py                               # real models, 1 2 4 8 sessions; starts the system on --base-port
    python bench/load.py --no-start --base-port 8000   # use the four services already running there
    python bench/load.py --sessions 4 8 --turns 3 --json bench/results/load.json
    python bench/load.py --standins                    # stand-in engines behind the real server: 100 sessions x 5 turns
    python bench/load.py --standins --sessions 200 --mic

Real-model mode: every user speaks corpus-built 3-13 s utterances (one clip, or 2-3 clips
of one speaker joined with 150-400 ms pauses) about every --interval seconds (10) on a
real-time microphone stream (bench/load_client.py); users start staggered over one
interval. Per N: sessions admitted, queued (told `queued{position, estimated_wait_s}`, then
admitted when a place frees) and refused (`error{code:"server_full"}`, close 1013), turns, answered, dropped (an admitted session's turn that got no audio), p50/p90/
p95/max end of speech -> first audio (ms, client clock, testing.session_client's
end-of-speech rule), CPU % of one core of each service process, and a verdict against the
targets (up to the server's session cap, 4 on 2 cores: p90 <= 1.0 s and none dropped;
beyond it: the admitted keep p90 <= 1.5 s, none dropped, the others told within 2 s).

Stand-in mode: the real session server (`launcher.py --services server`, with
SERVER_MAX_SESSIONS=200 and RATE_LIMIT_PER_MINUTE=0) in front of bench/standins, which
answer STT, chat and TTS on their real protocols at once. Turns are typed
(`{"type":"transcript"}`: no STT, no speech detector, no turn-taking wait, which is policy,
not overhead), so "send -> first audio chunk" at the client is the server's own overhead
plus the stand-ins' ~0 and loopback networking; the server's `first_audio_sent` stage (the
same span on its own clock) is printed beside it. Target: 0 dropped, p95 <= 20 ms. `--mic`
also streams real-time microphone silence on every session (the detector's per-frame cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load_client import SimUser, TurnInput  # noqa: E402
from bench.load_report import HEADER, CpuMeter, Level, pid_on_port, verdict_real, verdict_standins  # noqa: E402
from shared.config import ServerSettings  # noqa: E402
from testing.session_client import FRAME, last_voiced_sample  # noqa: E402
from tests.conftest import Clip, load_corpus, start_system, stop_system, system_env, wait_ready  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NAMES = ("server", "stt", "chat", "tts")
TYPED = [
    "What should I cook for dinner tonight?", "Tell me a fun fact about the ocean.", "How do I keep my plants alive?",
    "Can you suggest a short walk in the city?", "What is a good name for a cat?", "Give me one tip for sleeping better.",
]


def _first_voiced(pcm: np.ndarray) -> int:
    return len(pcm) - last_voiced_sample(pcm[::-1].copy())


def utterances(clips: list[Clip], count: int, seed: int, lo: float = 3.0, hi: float = 13.0) -> list[np.ndarray]:
    """`count` utterances of lo-hi seconds: a clip, or 2-3 clips of one speaker (trimmed to
    their voiced part, whole 20 ms frames) joined by 150-400 ms of silence."""
    rng = np.random.default_rng(seed)
    speakers: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        speakers[c.id.rsplit("-", 1)[0]].append(c)
    names = sorted(speakers)
    out: list[np.ndarray] = []
    while len(out) < count:
        own = speakers[names[rng.integers(len(names))]]
        picks = rng.choice(len(own), size=min(int(rng.integers(1, 4)), len(own)), replace=False)
        parts: list[np.ndarray] = []
        for i in picks:
            a = own[int(i)].audio
            if parts:
                parts.append(np.zeros(int(rng.uniform(0.15, 0.4) * 16000), np.int16))
            parts.append(a[_first_voiced(a) // FRAME * FRAME : last_voiced_sample(a)])
        x = np.concatenate(parts)
        if lo <= len(x) / 16000 <= hi:
            out.append(x)
    return out


def plans(args: argparse.Namespace, n: int, clips: list[Clip]) -> list[list[TurnInput]]:
    if args.standins:
        return [[TYPED[(i + k) % len(TYPED)] for k in range(args.turns)] for i in range(n)]
    pool: list[TurnInput] = list(utterances(clips, n * args.turns, seed=args.seed + n))
    return [pool[i * args.turns : (i + 1) * args.turns] for i in range(n)]


async def run_level(args: argparse.Namespace, ws: str, n: int, clips: list[Clip], meter: CpuMeter) -> Level:
    start = time.perf_counter() + 0.2
    run = uuid.uuid4().hex[:6]
    users = [
        SimUser(ws, f"load-{run}-{n}-{i}", turns, start=start + i * args.interval / n, interval=args.interval,
                mic=args.mic or not args.standins, answer_timeout=args.answer_timeout)
        for i, turns in enumerate(plans(args, n, clips))
    ]
    meter.start(time.perf_counter())
    results = await asyncio.gather(*(u.run() for u in users))
    end = time.perf_counter()
    return Level(n, list(results), meter.stop(end), end - start)


async def warm_up(ws: str) -> None:
    """One typed turn, so the first measured turn does not pay for cold caches."""
    await SimUser(ws, f"load-warmup-{uuid.uuid4().hex[:6]}", ["Hello, how are you?"], start=0, interval=0, mic=False).run()


async def measure(args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int]) -> dict:
    ws = urls["server"].replace("http://", "ws://") + "/ws"
    clips = [] if args.standins else load_corpus()
    meter = CpuMeter(pids, os.getpid())
    if not args.no_warmup:
        await warm_up(ws)
    levels = []
    print(HEADER, flush=True)
    for n in args.sessions:
        level = await run_level(args, ws, n, clips, meter)
        levels.append(level)
        print(level.row(), flush=True)
        await asyncio.sleep(2)  # let the server close the level's sessions before the next one
    cap = ServerSettings().max_sessions
    verdicts = [verdict_standins(lv) if args.standins else verdict_real(lv, cap) for lv in levels]
    print("\n" + "\n".join(verdicts))
    for lv in levels:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in lv.summary["stages_p50_ms"].items() if v is not None)
        print(f"N={lv.sessions} server stages p50 (ms): {stages}")
        if lv.summary["errors"]:
            print(f"N={lv.sessions} errors: {lv.summary['errors']}")
    return {"mode": "standins" if args.standins else "real", "interval_s": args.interval, "turns_per_session": args.turns,
            "mic": args.mic or not args.standins, "levels": [lv.summary for lv in levels], "verdicts": verdicts}


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_standins(base: int, max_sessions: int) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """The stand-ins on base+1..3 and the real server on base, pointed at them."""
    env = {**system_env(base), "SERVER_MAX_SESSIONS": str(max_sessions), "RATE_LIMIT_PER_MINUTE": "0"}
    urls = {n: f"http://127.0.0.1:{base + i}" for i, n in enumerate(NAMES)}
    procs = [_popen([sys.executable, "-m", "bench.standins", "--stt-port", str(base + 1), "--chat-port", str(base + 2),
                     "--tts-port", str(base + 3)], env, RESULTS / "load-standins.log")]
    try:
        for n in NAMES[1:]:
            wait_ready(urls[n], 30, procs[0])
        procs.append(_popen([sys.executable, "launcher.py", "--services", "server", "--combined-logs"], env, RESULTS / "load-launcher.log"))
        wait_ready(urls["server"], 60, procs[1])
    except BaseException:
        for p in procs:
            stop_system(p)
        raise
    return procs, urls


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standins", action="store_true", help="stand-in engines behind the real server (server overhead)")
    ap.add_argument("--sessions", type=int, nargs="+", help="load levels (default 1 2 4 8; stand-ins: 100)")
    ap.add_argument("--turns", type=int, help="turns per session (default 3; stand-ins: 5)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between a user's turn starts")
    ap.add_argument("--mic", action="store_true", help="stand-ins: stream real-time microphone silence too")
    ap.add_argument("--answer-timeout", type=float, default=15.0, help="seconds without audio after which a turn is dropped")
    ap.add_argument("--no-start", action="store_true", help="use services already running on --base-port..+3")
    ap.add_argument("--base-port", type=int, default=8000)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json", default=str(RESULTS / "load.json"))
    args = ap.parse_args(argv)
    args.sessions = args.sessions or ([100] if args.standins else [1, 2, 4, 8])
    args.turns = args.turns or (5 if args.standins else 3)
    urls = {n: f"http://127.0.0.1:{args.base_port + i}" for i, n in enumerate(NAMES)}
    procs: list[subprocess.Popen] = []
    if args.no_start:
        for u in urls.values():
            wait_ready(u, 10)
    elif args.standins:
        procs, urls = start_standins(args.base_port, max(200, 2 * max(args.sessions)))
    else:
        proc, urls = start_system(system_env(args.base_port), RESULTS / "load-launcher.log", 300)
        procs = [proc]
    try:
        names = ("server", "standins") if args.standins else NAMES
        pids = {n: p for n, p in zip(names, (pid_on_port(args.base_port + i) for i in range(len(names))), strict=True) if p}
        out = asyncio.run(measure(args, urls, pids))
    finally:
        for p in reversed(procs):
            stop_system(p)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
