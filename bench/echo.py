"""Echo benchmark (issue 10): the agent's own voice looped back into the microphone.

    python bench/echo.py                       # the full grid: 6 delays x 5 gains x reverb off/on
    python bench/echo.py --delays 0,0.45 --gains 0.8,1 --rooms 0.45

Per cell, one real-time session through the real services: a corpus clip, then the
reply is played back into the microphone like a client without echo cancellation
(delayed, attenuated, optionally through a synthetic room with RT60 0.45 s, over
-55 dBFS hiss). Counts self-turns (a transcript beyond the user's one) and
self-interruptions (`interrupted` with no one talking over us). With --barge, a second
session per cell has a second clip start 1 s after the reply's first audio arrived (so it
always talks over the reply, however short), and reports whether `interrupted` came. The
system prompt asks for long replies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.audio import rms_dbfs  # noqa: E402
from shared.session_client import stream_pcm  # noqa: E402
from tests.conftest import load_corpus, start_system, stop_system, system_env  # noqa: E402

DELAYS = (0.0, 0.04, 0.15, 0.3, 0.45, 0.5)
GAINS = (0.1, 0.3, 0.6, 0.8, 1.0)
ROOMS = (0.0, 0.45)
NOISE_DBFS = -55.0
# long replies: more of our own voice to hear back, and room for the second clip inside them
LONG_REPLIES = {"agentId": "assistant", "userId": "bench", "agentName": "Bench",
                "systemPrompt": "A chatty voice assistant who always answers in four or five long spoken sentences."}


def at_level(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    x = pcm.astype(np.float32) / 32768
    return (x * 10 ** ((dbfs - rms_dbfs(x)) / 20) * 32767).clip(-32768, 32767).astype(np.int16)


BARGE_AFTER = 1.0  # s after the reply's first audio that the second clip starts
BARGE_SHORTEST = BARGE_AFTER + 1.0  # s: a reply shorter than this ends before a barge-in can be told (0.6 s + the check)


async def cell(ws: str, first: np.ndarray, second: np.ndarray | None, loop: tuple[float, float, float, float]) -> dict:
    barge = None if second is None else (second, BARGE_AFTER)
    res = await stream_pcm(ws, first, tail=10.0, loopback=loop, wait_for_end=2, init=LONG_REPLIES, barge=barge)
    users = 1 if second is None else 2
    return {"turns": len(res.transcripts), "self_turns": max(0, len(res.transcripts) - users),
            "interrupted": len(res.of("interrupted")), "audio_s": res.audio_seconds(), "transcripts": res.transcripts}


async def main(args: argparse.Namespace) -> None:
    corpus = sorted(load_corpus(), key=lambda c: len(c.audio))
    first = at_level(corpus[len(corpus) // 3].audio, -20.0)
    second = at_level(corpus[len(corpus) // 2].audio, -20.0)
    base = int(os.environ.get("TEST_BASE_PORT", "18050"))
    proc, urls = start_system(system_env(base), ROOT / "test-output" / "bench-echo.log")
    ws = urls["server"].replace("http://", "ws://") + "/ws/"
    rows = []
    try:
        print(f"{'room':>6s} {'delay':>6s} {'gain':>5s} | {'self-turns':>10s} {'self-int':>8s} {'reply s':>7s}"
              + (" | barge-in" if args.barge else ""), flush=True)
        for rt60 in args.rooms:
            for delay in args.delays:
                for gain in args.gains:
                    loop = (gain, delay, rt60, NOISE_DBFS)
                    t0 = time.perf_counter()
                    echo = await cell(ws, first, None, loop)
                    row = {"rt60": rt60, "delay": delay, "gain": gain, **echo}
                    line = (f"{rt60:6.2f} {delay * 1000:5.0f}ms {gain:5.1f} | {echo['self_turns']:10d} "
                            f"{echo['interrupted']:8d} {echo['audio_s']:7.1f}")
                    if args.barge:
                        barge = await cell(ws, first, second, loop)
                        short = barge["interrupted"] == 0 and barge["audio_s"] < BARGE_SHORTEST
                        row["barge_in"] = None if short else barge["interrupted"] > 0
                        line += f" | {'n/a (reply ' + format(barge['audio_s'], '.1f') + ' s)' if short else 'yes' if row['barge_in'] else 'NO'}"
                    rows.append(row)
                    print(line + f"   ({time.perf_counter() - t0:.0f}s) {echo['transcripts']}", flush=True)
    finally:
        stop_system(proc)
    bad = sum(r["self_turns"] + r["interrupted"] for r in rows)
    missed = sum(1 for r in rows if args.barge and r["barge_in"] is False)
    na = sum(1 for r in rows if args.barge and r["barge_in"] is None)
    print(f"\n{len(rows)} cells: {bad} self-turns + self-interruptions; barge-in missed in {missed}"
          + (f" ({na} replies too short to talk over)" if na else ""))


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", type=floats, default=list(DELAYS))
    p.add_argument("--gains", type=floats, default=list(GAINS))
    p.add_argument("--rooms", type=floats, default=list(ROOMS), help="RT60 values in seconds (0: no reverb)")
    p.add_argument("--barge", action="store_true", help="also a talk-over session per cell")
    asyncio.run(main(p.parse_args()))
