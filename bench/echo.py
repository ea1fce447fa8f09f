"""Echo benchmark (issue 10): the agent's own voice looped back into the microphone.

    python bench/echo.py                       # the full grid: 6 delays x 5 gains x reverb off/on
    python bench/echo.py --delays 0,0.45 --gains 0.8,1 --rooms 0.45

Per cell, one real-time session through the real services: a corpus clip, then the
reply is played back into the microphone like a client without echo cancellation
(delayed, attenuated, optionally through a synthetic room with RT60 0.45 s, over
-55 dBFS hiss). Counts self-turns (a transcript beyond the user's one),
self-interruptions (`interrupted` with no one talking over us and no `resumed` after it:
a lost reply) and pauses (`interrupted` then `resumed`: a gap in our reply, nothing lost). With --barge, a second
session per cell has a second clip start 1 s after the reply's first audio arrived, and
reports whether the user got their turn: "yes" (`interrupted` came and that turn's
transcript holds 60% of the second clip's words: it may also hold some of our echo's, which
was in the mix while they talked over it), "late" (the reply ended before the
talk-over was told from our echo, but the clip still became its own turn with its words),
"n/a" (the reply was too short to talk over) or "NO" (lost, or its words were not the
clip's). The system prompt asks for long replies.
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

from shared.wer import normalise  # noqa: E402
from testing.session_client import stream_pcm  # noqa: E402
from tests.conftest import at_level, load_corpus, start_system, stop_system, system_env  # noqa: E402

DELAYS = (0.0, 0.04, 0.15, 0.3, 0.45, 0.5)
GAINS = (0.1, 0.3, 0.6, 0.8, 1.0)
ROOMS = (0.0, 0.45)
NOISE_DBFS = -55.0
# long replies: more of our own voice to hear back, and room for the second clip inside them
LONG_REPLIES = {"agentId": "assistant", "userId": "bench", "agentName": "Bench",
                "systemPrompt": "A chatty voice assistant who always answers in four or five long spoken sentences."}


BARGE_AFTER = 1.0  # s after the reply's first audio that the second clip starts
BARGE_SHORTEST = BARGE_AFTER + 2.5  # s: a reply shorter than this may end before talk-over is told from our echo
WORDS_OK = 0.6  # share of the clip's words the talk-over turn's transcript must hold


async def cell(ws: str, first: np.ndarray, second: np.ndarray | None, loop: tuple[float, float, float, float]) -> dict:
    barge = None if second is None else (second, BARGE_AFTER)
    res = await stream_pcm(ws, first, tail=10.0, loopback=loop, wait_for_end=2, init=LONG_REPLIES, barge=barge)
    users = 1 if second is None else 2
    paused = {m["turn_id"] for m in res.of("resumed")}
    cut = [m for m in res.of("interrupted") if m["turn_id"] not in paused]
    return {"turns": len(res.transcripts), "self_turns": max(0, len(res.transcripts) - users), "interrupted": len(cut),
            "paused": len(res.of("resumed")), "audio_s": res.audio_seconds(1), "transcripts": res.transcripts}


def barge_verdict(barge: dict, words: str) -> str:
    """Did the talk-over become the user's turn, with their words?"""
    turns, ref = barge["transcripts"][1:], normalise(words)
    last = set(normalise(turns[-1])) if turns else set()
    heard = bool(turns) and sum(w in last for w in ref) >= WORDS_OK * len(ref)
    if barge["interrupted"] and heard:
        return "yes"
    if heard:
        return "late"
    if barge["interrupted"] == 0 and barge["audio_s"] < BARGE_SHORTEST:
        return "n/a"
    return "NO"


async def main(args: argparse.Namespace) -> None:
    corpus = sorted(load_corpus(), key=lambda c: len(c.audio))
    first = at_level(corpus[len(corpus) // 3].audio, -20.0)
    second_clip = corpus[len(corpus) // 2]
    second = at_level(second_clip.audio, -20.0)
    base = int(os.environ.get("TEST_BASE_PORT", "18050"))
    proc, urls = start_system(system_env(base), ROOT / "test-output" / "bench-echo.log")
    ws = urls["server"].replace("http://", "ws://") + "/ws/"
    rows = []
    try:
        print(f"{'room':>6s} {'delay':>6s} {'gain':>5s} | {'self-turns':>10s} {'self-int':>8s} {'pauses':>6s} {'reply s':>7s}"
              + (" | barge-in" if args.barge else ""), flush=True)
        for rt60 in args.rooms:
            for delay in args.delays:
                for gain in args.gains:
                    loop = (gain, delay, rt60, NOISE_DBFS)
                    t0 = time.perf_counter()
                    echo = await cell(ws, first, None, loop)
                    row = {"rt60": rt60, "delay": delay, "gain": gain, **echo}
                    line = (f"{rt60:6.2f} {delay * 1000:5.0f}ms {gain:5.1f} | {echo['self_turns']:10d} "
                            f"{echo['interrupted']:8d} {echo['paused']:6d} {echo['audio_s']:7.1f}")
                    if args.barge:
                        barge = await cell(ws, first, second, loop)
                        row["barge_in"] = barge_verdict(barge, second_clip.transcript)
                        line += f" | {row['barge_in']:4s} (reply {barge['audio_s']:.1f} s) {barge['transcripts'][1:]}"
                    rows.append(row)
                    print(line + f"   ({time.perf_counter() - t0:.0f}s) {echo['transcripts']}", flush=True)
    finally:
        stop_system(proc)
    bad = sum(r["self_turns"] + r["interrupted"] for r in rows)
    print(f"\n{len(rows)} cells: {bad} self-turns + self-interruptions; {sum(r['paused'] for r in rows)} pauses resumed "
          f"(in {sum(r['paused'] > 0 for r in rows)} cells)")
    if args.barge:
        n = {v: sum(r["barge_in"] == v for r in rows) for v in ("yes", "late", "n/a", "NO")}
        print(f"talk-over: interrupted with the user's words in {n['yes']}, their own turn after the reply in "
              f"{n['late']}, reply too short in {n['n/a']}, lost in {n['NO']}")


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", type=floats, default=list(DELAYS))
    p.add_argument("--gains", type=floats, default=list(GAINS))
    p.add_argument("--rooms", type=floats, default=list(ROOMS), help="RT60 values in seconds (0: no reverb)")
    p.add_argument("--barge", action="store_true", help="also a talk-over session per cell")
    asyncio.run(main(p.parse_args()))
