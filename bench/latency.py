"""Latency benchmark: end of speech -> first audio at the client, per stage, on the corpus.

    python bench/latency.py                 # starts the system with the launcher
    python bench/latency.py --no-start      # uses services already running on :8000-8003
    python bench/latency.py --limit 8 --json bench/results/latency.json

Every corpus clip is streamed in real time (20 ms frames, 0.5 s of silence before,
2.5 s after) through ws://.../ws/{id}. End of speech is the clip's last voiced
frame (within 35 dB of its peak), taken from the clip, not from our detector;
audio received before it counts as a reply that started early, never as a fast turn.

Stages come from the server's `metrics` message (ms from the detector's end of
speech) plus the client's own clock for the first audio chunk. In the same run, a
naive sequential pipeline (wait for the silence limit, transcribe, full reply, full
synthesis, then send) runs on the same clips through the same services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.server.agents import AgentBook  # noqa: E402
from shared.audio import float_to_pcm16  # noqa: E402
from shared.config import ServerSettings  # noqa: E402
from shared.session_client import last_voiced_sample, stream_pcm  # noqa: E402
from shared.wer import wer  # noqa: E402
from tests.conftest import load_corpus, start_system, stop_system, system_env, wait_ready  # noqa: E402

STAGES = ["created", "stt", "first_token", "first_chunk", "confirmed", "first_tts_audio", "first_audio_sent"]
LABELS = {
    "created": "detector decision (pause)",
    "stt": "STT done",
    "first_token": "first chat token",
    "first_chunk": "first text chunk cut",
    "confirmed": "turn confirmed",
    "first_tts_audio": "first TTS audio",
    "first_audio_sent": "first audio sent",
    "client": "first audio at client",
}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def rss_mb() -> dict[str, float]:
    """Resident memory of each service process (uvicorn workers found by their app module)."""
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for name in ("server", "stt", "chat", "tts"):
            if f"services.{name}.app:app" in cmd:
                kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
                out[name] = out.get(name, 0.0) + kb / 1024
    return out


async def naive_turn(urls: dict[str, str], pcm: np.ndarray, http: httpx.AsyncClient, silence_wait: float, system: str) -> dict[str, float]:
    """Sequential baseline, timed from the end of speech: silence wait, STT, full reply, full TTS."""
    t0 = time.perf_counter()
    await asyncio.sleep(silence_wait)  # a fixed-silence endpointer has to wait this long
    utterance = pcm[: last_voiced_sample(pcm) + int(0.3 * 16000)]
    r = await http.post(f"{urls['stt']}/transcribe", files={"audio_file": ("u.pcm", float_to_pcm16(utterance.astype(np.float32) / 32768).tobytes())})
    text = r.json()["text"]
    t_stt = time.perf_counter()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]  # as a session would
    r = await http.post(f"{urls['chat']}/v1/chat/completions", json={"messages": messages})
    reply = r.json()["choices"][0]["message"]["content"] or "Okay."
    t_chat = time.perf_counter()
    r = await http.post(f"{urls['tts']}/tts", json={"text": reply})
    assert r.status_code == 200
    t_tts = time.perf_counter()
    ms = lambda t: (t - t0) * 1000  # noqa: E731
    return {"stt": ms(t_stt), "chat": ms(t_chat), "tts": ms(t_tts), "client": ms(t_tts)}


def table(rows: list[dict[str, float]], keys: list[str]) -> list[str]:
    lines = [f"{'stage (ms from end of speech)':32s} {'p50':>7s} {'p90':>7s} {'max':>7s}  n"]
    for k in keys:
        xs = [r[k] for r in rows if k in r]
        if xs:
            lines.append(f"{LABELS.get(k, k):32s} {statistics.median(xs):7.0f} {pct(xs, 0.9):7.0f} {max(xs):7.0f}  {len(xs)}")
    return lines


async def run(args: argparse.Namespace, urls: dict[str, str]) -> dict:
    clips = load_corpus()[: args.limit]
    ws = urls["server"].replace("http://", "ws://") + "/ws/"
    turns, naive, early, refs, hyps = [], [], 0, [], []
    agent = AgentBook.load(ServerSettings().agents_file).get("assistant")
    async with httpx.AsyncClient(timeout=60) as http:
        for clip in clips:
            res = await stream_pcm(ws + uuid.uuid4().hex, clip.audio)
            metrics = res.of("metrics")
            row = dict(metrics[-1]["stages"]) if metrics else {}
            if res.latency is not None:
                row["client"] = res.latency * 1000
            early += res.early_audio > 0
            refs.append(clip.transcript)
            hyps.append(" ".join(res.transcripts))
            turns.append(row)
            print(f"{clip.id:28s} client {row.get('client', float('nan')):6.0f} ms  early={res.early_audio > 0}  "
                  f"audio {res.audio_seconds():.1f}s  {' '.join(f'{k}={row[k]:.0f}' for k in STAGES if k in row)}", flush=True)
            if not args.no_baseline:
                naive.append(await naive_turn(urls, clip.audio, http, ServerSettings().max_silence_duration, agent.systemPrompt))
    lat = [t["client"] for t in turns if "client" in t]
    out = {
        "clips": len(clips),
        "answered": len(lat),
        "early": early,
        "wer": wer(refs, hyps),
        "p50_ms": statistics.median(lat) if lat else None,
        "p90_ms": pct(lat, 0.9),
        "turns": turns,
        "naive": naive,
        "memory_mb": rss_mb(),
    }
    print()
    print("\n".join(table(turns, [*STAGES, "client"])))
    if naive:
        nl = [n["client"] for n in naive]
        out["naive_p50_ms"] = statistics.median(nl)
        out["speedup_p50"] = statistics.median(nl) / out["p50_ms"] if lat else None
        print("\nnaive sequential baseline (same clips, same services)")
        print("\n".join(table(naive, ["stt", "chat", "tts", "client"])))
        print(f"\nspeed-up at p50: {out['speedup_p50']:.2f}x")
    mem = out["memory_mb"]
    print(f"\nmemory (RSS MB): {', '.join(f'{k} {v:.0f}' for k, v in sorted(mem.items()))}; total {sum(mem.values()):.0f}")
    print(f"end of speech -> first audio: p50 {out['p50_ms']:.0f} ms, p90 {out['p90_ms']:.0f} ms over {len(lat)}/{len(clips)} turns; "
          f"{early} replies started before the speaker finished; WER {out['wer']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-start", action="store_true", help="use services already running on :8000-8003")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "latency.json"))
    ap.add_argument("--base-port", type=int, default=8000)
    args = ap.parse_args()
    env = system_env(args.base_port)
    urls = {n: f"http://127.0.0.1:{env[f'{n.upper()}_PORT']}" for n in ("server", "stt", "chat", "tts")}
    proc = None
    if not args.no_start:
        proc, urls = start_system(env, ROOT / "bench" / "results" / "launcher.log", 300)
    else:
        for u in urls.values():
            wait_ready(u, 10)
    try:
        out = asyncio.run(run(args, urls))
    finally:
        if proc is not None:
            stop_system(proc)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
