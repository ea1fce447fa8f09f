"""Latency benchmark: end of speech -> first audio at the client, per stage, per speech set.

    python bench/latency.py                          # starts the system with the launcher
    python bench/latency.py --sets long --limit 4    # one set, its first 4 utterances
    python bench/latency.py --no-start --base-port 8000   # services already running there
    python bench/latency.py --sets plain --baseline  # plus the naive sequential pipeline
    python bench/latency.py --transport twilio       # each utterance a phone call (bench/phone.py)

Sets (bench/speech_sets.py): "plain" = the corpus clips as recorded; "long" = 2-4 clips
of one speaker joined into 6-15 s with 150-400 ms pauses; "unfinished" = a clip with a
1-2 s pause inside the unfinished sentence. Each utterance is streamed in real time
(20 ms frames, 0.5 s of silence before, 2.5 s after) through ws://.../ws/{id}. End of
speech is the utterance's last voiced frame (within 35 dB of its peak), taken from the
audio, not from our detector; audio received before it counts as a reply that started
early (the speaker had only paused), never as a fast turn. The latency is that of the
turn that answered the whole utterance (the last transcript's turn).

Stages come from the server's `metrics` message for that turn (ms from the detector's
end of speech) plus the client's clock for the first audio chunk. After the session
runs (not concurrently, so the CPU is not shared), the bench loads the bundled Whisper
model itself and transcribes the same audio with faster-whisper's standard
`transcribe()` (beam 1): the STT WER target is "within 1 point of that".
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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import phone  # noqa: E402
from bench.speech_sets import NAMES, Utterance, answer_latency, answer_stages, build, final_transcripts, pct  # noqa: E402
from services.server.agents import AgentBook  # noqa: E402
from shared.audio import float_to_pcm16  # noqa: E402
from shared.config import ServerSettings  # noqa: E402
from shared.wer import wer  # noqa: E402
from testing.session_client import last_voiced_sample, stream_pcm  # noqa: E402
from tests.conftest import rss_mb, service_pid, start_system, stop_system, system_env, wait_ready  # noqa: E402

SERVICES = ("server", "stt", "chat", "tts")
STAGES = ["created", "stt", "end_of_turn", "first_token", "first_chunk", "confirmed", "first_tts_audio", "first_audio_sent"]
LABELS = {
    "created": "detector decision (pause)",
    "stt": "STT done",
    "end_of_turn": "end-of-turn estimate",
    "first_token": "first chat token",
    "first_chunk": "first text chunk cut",
    "confirmed": "turn confirmed",
    "first_tts_audio": "first TTS audio",
    "first_audio_sent": "first audio sent",
    "sounds_finished": "audio sounds finished",
    "client": "first audio at client",
}
TARGET_P50, TARGET_P90, TARGET_WER_POINTS, TARGET_MB = 450.0, 700.0, 1.0, 2500.0
EARLY_ALLOWED = {"plain": 0.0, "long": 0.0, "unfinished": 0.1}  # share of utterances


def memory(env: dict[str, str]) -> dict[str, float]:
    """Resident memory (MB) of the four services the launcher started for these ports."""
    out = {}
    for name in SERVICES:
        try:
            out[name] = rss_mb(service_pid(name, int(env[f"{name.upper()}_PORT"])))
        except (StopIteration, OSError, RuntimeError):
            pass
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


async def run_set(name: str, utts: list[Utterance], ws: str) -> list[dict]:
    rows = []
    for u in utts:
        res = await stream_pcm(ws + uuid.uuid4().hex, u.audio)
        lat = answer_latency(res)
        stages = answer_stages(res)
        if lat is not None:
            stages["client"] = lat * 1000
        final = final_transcripts(res)
        row = {"id": u.id, "duration": round(u.duration, 2), "pauses": list(u.pauses), "early": res.early_audio > 0,
               "latency_ms": None if lat is None else lat * 1000, "partials": len(res.of("transcript_partial")),
               "transcripts": len(res.transcripts), "turns": len(final), "ref": u.reference,
               "hyp": " ".join(t for _, t in final), "stages": stages}
        rows.append(row)
        print(f"  [{name}] {u.id[:48]:48s} {u.duration:5.1f}s  client {stages.get('client', float('nan')):6.0f} ms  "
              f"early={row['early']!s:5s} turns={row['turns']} partials={row['partials']:3d}  "
              f"{' '.join(f'{k}={stages[k]:.0f}' for k in STAGES if k in stages)}", flush=True)
    return rows


async def baseline(urls: dict[str, str], utts: list[Utterance]) -> list[dict[str, float]]:
    agent = AgentBook.load(ServerSettings().agents_file).get("assistant")
    async with httpx.AsyncClient(timeout=60) as http:
        return [await naive_turn(urls, u.audio, http, ServerSettings().max_silence_duration, agent.systemPrompt) for u in utts]


def standard_transcripts(sets: dict[str, list[Utterance]]) -> dict[str, list[str]]:
    """faster-whisper's own transcribe() (beam 1) on the same audio, in this process."""
    from faster_whisper import WhisperModel

    from services.stt.engines.faster_whisper import bundled_model_path

    model = WhisperModel(bundled_model_path(), device="cpu", compute_type="int8", cpu_threads=2)
    out = {}
    for name, utts in sets.items():
        out[name] = [" ".join(s.text.strip() for s in model.transcribe(u.audio.astype(np.float32) / 32768, beam_size=1)[0]) for u in utts]
    return out


def report(name: str, rows: list[dict], std: list[str], mem: dict[str, float], naive: list[dict[str, float]]) -> dict:
    lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    early = sum(r["early"] for r in rows)
    refs = [r["ref"] for r in rows]
    w_session, w_std = wer(refs, [r["hyp"] for r in rows]), wer(refs, std)
    partials = [r["partials"] for r in rows]
    p50, p90 = (statistics.median(lat), pct(lat, 0.9)) if lat else (float("nan"), float("nan"))
    total_mb = sum(mem.values())
    out = {"utterances": len(rows), "answered": len(lat), "early": early, "p50_ms": p50, "p90_ms": p90,
           "wer_session": w_session, "wer_standard": w_std, "partials_p50": statistics.median(partials) if partials else None,
           "memory_mb": mem, "rows": rows}
    print(f"\n=== set: {name} ({len(rows)} utterances) ===")
    print(f"{'utterance':48s} {'dur s':>5s} {'early':>5s} {'turns':>5s} {'partials':>8s} {'first audio ms':>14s}")
    for r in rows:
        print(f"{r['id'][:48]:48s} {r['duration']:5.1f} {'yes' if r['early'] else 'no':>5s} {r['turns']:5d} {r['partials']:8d} "
              f"{r['latency_ms'] if r['latency_ms'] is not None else float('nan'):14.0f}")
    print()
    extra = sorted({k for r in rows for k in r["stages"]} - {*STAGES, "client"})  # stages added since (e.g. sounds_finished)
    print("\n".join(table([r["stages"] for r in rows], [*STAGES, *extra, "client"])))
    print(f"partials per utterance: p50 {out['partials_p50']}, max {max(partials, default=0)}")
    if naive:
        nl = [n["client"] for n in naive]
        out["naive_p50_ms"] = statistics.median(nl)
        out["speedup_p50"] = statistics.median(nl) / p50 if lat else None
        print("\nnaive sequential baseline (same utterances, same services)")
        print("\n".join(table(naive, ["stt", "chat", "tts", "client"])))
        print(f"speed-up at p50: {out['speedup_p50']:.2f}x")
    allowed = EARLY_ALLOWED.get(name, 0.0)
    ok = lambda b: "ok  " if b else "MISS"  # noqa: E731
    print(f"\n{ok(p50 <= TARGET_P50)} end of speech -> first audio p50 {p50:.0f} ms (target <= {TARGET_P50:.0f}) over {len(lat)}/{len(rows)}")
    print(f"{ok(p90 <= TARGET_P90)} end of speech -> first audio p90 {p90:.0f} ms (target <= {TARGET_P90:.0f})")
    print(f"{ok(early <= allowed * len(rows))} replies started before the speaker finished: {early}/{len(rows)} (target <= {allowed:.0%})")
    # every turn must have its language model's P(end) before it is confirmed: a missing cue is a bug, not a verdict
    missing = [r["id"] for r in rows if r["stages"] and "end_of_turn" not in r["stages"]]
    late = [r["id"] for r in rows if "end_of_turn" in r["stages"] and "confirmed" in r["stages"]
            and r["stages"]["end_of_turn"] > r["stages"]["confirmed"]]
    out["lm_reading_missing"], out["lm_reading_late"] = missing, late
    print(f"{ok(not missing and not late)} language-model reading before the end of turn: missing in {len(missing)}, "
          f"after the confirmation in {len(late)} of {len(rows)}{(': ' + ', '.join(missing + late)) if missing or late else ''}")
    print(f"{ok(w_session - w_std <= TARGET_WER_POINTS / 100)} WER session {w_session:.1%} vs standard transcribe() {w_std:.1%} "
          f"({(w_session - w_std) * 100:+.1f} points; target <= +{TARGET_WER_POINTS:.0f})")
    print(f"{ok(total_mb <= TARGET_MB)} memory (RSS MB): {', '.join(f'{k} {v:.0f}' for k, v in sorted(mem.items()))}; "
          f"total {total_mb:.0f} (target <= {TARGET_MB:.0f})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(NAMES), help=f"comma-separated, of {', '.join(NAMES)}")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    ap.add_argument("--no-start", action="store_true", help="use services already running at --base-port")
    ap.add_argument("--base-port", type=int, default=8000, help="server port; stt, chat, tts on the next three")
    ap.add_argument("--baseline", action="store_true", help="also time the naive sequential pipeline (plain set)")
    ap.add_argument("--transport", choices=["ws", "twilio"], default="ws",
                    help="the session WebSocket, or phone calls over Twilio Media Streams (bench/phone.py)")
    ap.add_argument("--json", default=None, help="default bench/results/latency.json (latency-twilio.json)")
    args = ap.parse_args()
    args.json = args.json or str(ROOT / "bench" / "results" / ("latency.json" if args.transport == "ws" else "latency-twilio.json"))
    sets = build([s for s in args.sets.split(",") if s], args.limit)
    env = system_env(args.base_port)
    urls = {n: f"http://127.0.0.1:{env[f'{n.upper()}_PORT']}" for n in SERVICES}
    proc = None
    if not args.no_start:
        proc, urls = start_system(env, ROOT / "bench" / "results" / "launcher.log", 300)
    else:
        for u in urls.values():
            wait_ready(u, 10)
    ws = urls["server"].replace("http://", "ws://") + "/ws/"
    if args.transport == "twilio":
        return phone_main(sets, urls, proc, args.json)
    rows, mem, naive = {}, {}, {}
    try:
        for name, utts in sets.items():
            rows[name] = asyncio.run(run_set(name, utts, ws))
            mem[name] = memory(env)
            if args.baseline and name == "plain":
                naive[name] = asyncio.run(baseline(urls, utts))
    finally:
        if proc is not None:
            stop_system(proc)
    t0 = time.perf_counter()
    std = standard_transcripts(sets)
    print(f"\nstandard transcribe() on {sum(map(len, sets.values()))} utterances: {time.perf_counter() - t0:.0f} s")
    for name in sets:
        for r, text in zip(rows[name], std[name], strict=True):
            r["standard"] = text
    out = {name: report(name, rows[name], std[name], mem[name], naive.get(name, [])) for name in sets}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


def phone_main(sets: dict[str, list[Utterance]], urls: dict[str, str], proc: object, json_path: str) -> None:
    url = urls["server"].replace("http://", "ws://") + "/telephony/twilio"
    texts = [u.reference for u in next(iter(sets.values()))][:8]
    try:
        rows = {name: asyncio.run(phone.run_set(name, utts, url)) for name, utts in sets.items()}
        spoken = phone.speak(urls["tts"], texts)
    finally:
        if proc is not None:
            stop_system(proc)  # type: ignore[arg-type]
    speech = phone.reply_wer(texts, spoken)
    out = {name: phone.report(name, rows[name], speech) for name in sets}
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(out, indent=1))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
