"""Streaming STT against faster-whisper's standard transcribe(), on the same audio.

Starts the STT service alone (or uses --url), streams every corpus clip and long
utterances (2-4 clips of one speaker joined with 150-400 ms pauses, 6-15 s) through
WS /transcribe/stream in real time (20 ms frames), flushes at the end of the audio,
then transcribes the same audio with `WhisperModel.transcribe(beam_size=1)` (30 s window)
in this process. Prints WER side by side, flush -> final latency, the slowest partial
pass over the audio it covered, and the service's CPU seconds per second of audio.

    flock /tmp/cpu.lock .venv/bin/python bench/stt_stream.py [--url http://127.0.0.1:8001] [--long 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.wer import wer  # noqa: E402
from tests.conftest import ROOT, Clip, load_corpus, stop_system, wait_ready  # noqa: E402


def speaker(clip_id: str) -> str:
    parts = clip_id.split("-")
    return "-".join(parts[:2]) if parts[0] == "arctic" else parts[0]


def long_utterances(corpus: list[Clip], count: int, seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """Runs of 2-4 consecutive clips of one speaker, 6-15 s with their pauses."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Clip]] = {}
    for c in corpus:
        groups.setdefault(speaker(c.id), []).append(c)
    out = []
    for spk, clips in groups.items():
        for start in range(len(clips)):
            for n in (3, 2, 4):
                run = clips[start : start + n]
                if len(run) < n:
                    continue
                parts = [p for c in run for p in (c.audio, np.zeros(int(rng.uniform(0.15, 0.4) * 16000), np.int16))][:-1]
                pcm = np.concatenate(parts)
                if 6 <= len(pcm) / 16000 <= 15:
                    out.append((f"{spk}x{n}@{start}", " ".join(c.transcript for c in run), pcm))
                    break
    rng.shuffle(out)  # type: ignore[arg-type]
    return out[:count]


async def stream_one(url: str, pcm: np.ndarray) -> dict:
    async with websockets.connect(url) as ws:
        t0 = time.perf_counter()
        for k, i in enumerate(range(0, len(pcm), 320)):
            await ws.send(pcm[i : i + 320].tobytes())
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.perf_counter()))  # real time, no drift
        t_flush = time.perf_counter()
        await ws.send(json.dumps({"type": "flush"}))
        partials = 0
        while (msg := json.loads(await ws.recv()))["type"] != "final":
            partials += msg["type"] == "partial"
        return {**msg, "latency": time.perf_counter() - t_flush, "partials": partials}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def baseline(utts: list[tuple[str, str, np.ndarray]]) -> list[str]:
    from faster_whisper import WhisperModel

    from services.stt.engines.faster_whisper import bundled_model_path

    model = WhisperModel(bundled_model_path(), device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True)
    out = []
    for _, _, pcm in utts:
        segs, _ = model.transcribe(pcm.astype(np.float32) / 32768, beam_size=1, language="en", vad_filter=False,
                                   condition_on_previous_text=False, temperature=0.0)
        out.append(" ".join(s.text.strip() for s in segs))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="a running STT service (default: start one)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("TEST_BASE_PORT", "18000")) + 21)
    ap.add_argument("--long", type=int, default=8, help="how many joined utterances")
    args = ap.parse_args()
    corpus = load_corpus()
    longs = long_utterances(corpus, args.long)
    utts = longs + [(c.id, c.transcript, c.audio) for c in corpus]
    proc = None
    url = args.url
    if url is None:
        url = f"http://127.0.0.1:{args.port}"
        log = open(ROOT / "test-output" / "bench_stt_stream.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "services.stt.app:app", "--host", "127.0.0.1", "--port", str(args.port)],
                                cwd=ROOT, env={**os.environ, "API_KEYS": ""}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(url, 120, proc)
    try:
        cpu0 = cpu_seconds(proc.pid) if proc else 0.0
        results = [asyncio.run(stream_one(url.replace("http://", "ws://") + "/transcribe/stream", pcm)) for _, _, pcm in utts]
        cpu = cpu_seconds(proc.pid) - cpu0 if proc else float("nan")
    finally:
        if proc:
            stop_system(proc)
    base = baseline(utts)
    audio = sum(len(p) for _, _, p in utts) / 16000
    print(f"\n{len(longs)} joined utterances (6-15 s) + {len(corpus)} clips, {audio:.0f} s of audio, streamed in real time\n")
    print("| set | n | streaming WER | transcribe() WER | flush→final p50 / p90 / max | slowest pass (x real time) |")
    print("|---|---|---|---|---|---|")
    for name, sel in (("joined 6-15 s", slice(0, len(longs))), ("single clips", slice(len(longs), None)), ("all", slice(None))):
        rs, us, bs = results[sel], utts[sel], base[sel]
        refs = [u[1] for u in us]
        lat = [r["latency"] for r in rs]
        print(f"| {name} | {len(rs)} | {wer(refs, [r['text'] for r in rs]):.3f} | {wer(refs, bs):.3f} | "
              f"{pct(lat, 50):.0f} / {pct(lat, 90):.0f} / {max(lat) * 1000:.0f} ms | {max(r['max_pass_rtf'] for r in rs):.2f} |")
    print(f"\nservice CPU: {cpu:.1f} s for {audio:.0f} s of audio = {cpu / audio:.2f} CPU s per audio s; "
          f"partial passes: {sum(r['passes'] for r in results)}, partial messages: {sum(r['partials'] for r in results)}")
    worst = sorted(zip(results, utts, base, strict=True), key=lambda t: -t[0]["latency"])[:3]
    for r, u, _ in worst:
        print(f"  slowest final: {u[0]} ({len(u[2]) / 16000:.1f} s) {r['latency'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
