"""Turn-taking benchmark: pauses inside one thought, and barge-in timing.

    python bench/turn_taking.py                  # starts the system once per configuration
    python bench/turn_taking.py --clips 6

1. Pauses: corpus clips with their quietest mid-clip gap replaced by a pause of
   0.3-0.85 s (under the 0.9 s silence limit), so each stream is one thought. A reply
   whose audio arrives before the stream's last voiced frame was sent started before
   the speaker finished. Compared with a silence-only configuration (no early end of
   turn: every answer waits for the full silence limit), which shows the latency cost.
2. Barge-in: a clip, then, as soon as its answer's first audio arrives, a second clip.
   Reports the time from the second clip's first voiced frame to `interrupted` and to
   the last audio chunk of the old turn received.
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

from shared.session_client import stream_pcm  # noqa: E402
from tests.conftest import load_corpus, start_system, stop_system, system_env, with_pause  # noqa: E402

PAUSES = (0.3, 0.5, 0.7, 0.85)
CONFIGS = {"default": {}, "silence only": {"SERVER_CONFIRM_SILENCE": "0.9"}}


async def pauses(ws: str, clips) -> list[dict]:
    rows = []
    for clip in clips:
        for p in PAUSES:
            res = await stream_pcm(ws + uuid.uuid4().hex, with_pause(clip.audio, p)[0])
            rows.append({"clip": clip.id, "pause": p, "early": res.early_audio > 0, "turns": len(res.transcripts),
                         "latency_ms": None if res.latency is None else res.latency * 1000})
            print(f"  {clip.id:26s} pause {p:.2f}s  turns {rows[-1]['turns']}  early {rows[-1]['early']!s:5s}  "
                  f"latency {rows[-1]['latency_ms'] or float('nan'):5.0f} ms", flush=True)
    return rows


async def barge_in(ws: str, first: np.ndarray, second: np.ndarray) -> dict | None:
    events: list[tuple[float, dict]] = []
    async with websockets.connect(ws + uuid.uuid4().hex, max_size=2**24) as sock:
        await sock.send(json.dumps({"agentId": "assistant", "userId": "bench", "agentName": "Bench"}))

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
        t_onset = await speak(np.concatenate([second, np.zeros(16000 * 3, np.int16)]))
        reader.cancel()
    cut = [(t, m) for t, m in events if m["type"] == "interrupted"]
    if not cut:
        return None
    old = cut[0][1]["turn_id"]
    last_old = max(t for t, m in events if m["type"] == "tts_stream" and m["data"]["turn_id"] == old)
    return {"to_interrupted_ms": (cut[0][0] - t_onset) * 1000, "to_last_old_audio_ms": (last_old - t_onset) * 1000,
            "old_audio_after_interrupted": sum(1 for t, m in events if m["type"] == "tts_stream" and m["data"]["turn_id"] == old and t > cut[0][0])}


def summary(rows: list[dict]) -> list[str]:
    out = [f"{'pause':>6s} {'early':>7s} {'one turn':>9s} {'p50 ms':>7s}"]
    for p in PAUSES:
        r = [x for x in rows if x["pause"] == p]
        lat = [x["latency_ms"] for x in r if x["latency_ms"] is not None and not x["early"]]
        out.append(f"{p:6.2f} {sum(x['early'] for x in r):3d}/{len(r):<3d} {sum(x['turns'] == 1 for x in r):5d}/{len(r):<3d} "
                   f"{statistics.median(lat) if lat else float('nan'):7.0f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8, help="longest N corpus clips")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "turn_taking.json"))
    args = ap.parse_args()
    corpus = sorted(load_corpus(), key=lambda c: -len(c.audio))
    clips = corpus[: args.clips]
    out: dict = {}
    for name, env in CONFIGS.items():
        print(f"configuration: {name} {env}", flush=True)
        proc, urls = start_system({**system_env(8100), **env}, ROOT / "bench" / "results" / "turn_taking_launcher.log", 300)
        ws = urls["server"].replace("http://", "ws://") + "/ws/"
        try:
            out[name] = {"pauses": asyncio.run(pauses(ws, clips))}
            if name == "default":
                pairs = [(corpus[i], corpus[i + 1]) for i in range(0, min(len(corpus) - 1, 12), 2)]
                out[name]["barge_in"] = [b for a, c in pairs if (b := asyncio.run(barge_in(ws, a.audio, c.audio)))]
        finally:
            stop_system(proc)
    for name in CONFIGS:
        print(f"\n{name}: replies started before the speaker finished, by inner pause")
        print("\n".join(summary(out[name]["pauses"])))
    bi = out["default"]["barge_in"]
    if bi:
        print(f"\nbarge-in ({len(bi)} runs): start of user speech -> interrupted p50 {statistics.median(b['to_interrupted_ms'] for b in bi):.0f} ms, "
              f"-> last old-turn audio chunk p50 {statistics.median(b['to_last_old_audio_ms'] for b in bi):.0f} ms "
              f"(max {max(b['to_last_old_audio_ms'] for b in bi):.0f}); old-turn chunks after interrupted: {sum(b['old_audio_after_interrupted'] for b in bi)}")
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
