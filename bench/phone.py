"""The phone transport of bench/latency.py (`--transport twilio`): each utterance is one call
through ws://.../telephony/twilio, replayed by testing/twilio_client.py as Twilio would (μ-law
8 kHz, 20 ms frames in real time, marks echoed once played). The latency is end of speech (the
last voiced frame, as on /ws) -> our first `media` frame.

A phone client sees no transcript, so WER is measured on what a caller hears instead: the TTS
service speaks reference sentences, the bench sends them through our phone encoder and decoder
(24 kHz float -> 8 kHz μ-law -> 16 kHz), and the bundled Whisper transcribes both the direct and
the μ-law audio. The difference is what the phone line costs the listener.
"""

from __future__ import annotations

import io
import statistics
import tempfile
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import soxr

from bench.speech_sets import Utterance, pct
from services.server.telephony.g711 import Inbound, Outbound
from shared.wer import wer
from testing.twilio_client import call


async def run_set(name: str, utts: list[Utterance], url: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for u in utts:
            wav = Path(tmp) / "utterance.wav"
            sf.write(wav, u.audio, 16000, subtype="PCM_16")
            res = await call(url, [wav], reply_timeout_s=20, settle_s=0.8)
            turn = res.turns[0]
            lat = None if turn.latency is None else turn.latency * 1000
            row = {"id": u.id, "duration": round(u.duration, 2), "early": turn.early_media > 0, "latency_ms": lat,
                   "reply_s": round(len(turn.reply) / 16000, 2), "violations": len(res.violations), "odd_frames": res.odd_frames}
            rows.append(row)
            print(f"  [{name} / twilio] {u.id[:48]:48s} {u.duration:5.1f}s  first media "
                  f"{lat if lat is not None else float('nan'):6.0f} ms  early={row['early']!s:5s} reply {row['reply_s']:.1f}s", flush=True)
    return rows


def speak(tts_url: str, texts: list[str]) -> list[np.ndarray]:
    """The TTS service's audio of each text, 24 kHz float32."""
    out = []
    with httpx.Client(timeout=60) as http:
        for text in texts:
            r = http.get(f"{tts_url}/tts", params={"text": text})
            r.raise_for_status()
            x, rate = sf.read(io.BytesIO(r.content), dtype="float32")
            out.append(soxr.resample(x, rate, 24000) if rate != 24000 else x)
    return out


def phone_line(x24: np.ndarray) -> np.ndarray:
    """24 kHz float32 through our μ-law encoder and decoder: 16 kHz float32, as a caller hears it."""
    enc, dec = Outbound("mulaw"), Inbound("mulaw")
    frames = enc.push(x24.astype("<f4").tobytes()) + enc.flush()
    return np.frombuffer(b"".join(dec.push(f) for f in frames), "<i2").astype(np.float32) / 32768


def reply_wer(texts: list[str], audio24: list[np.ndarray]) -> dict[str, float]:
    from faster_whisper import WhisperModel

    from services.stt.engines.faster_whisper import bundled_model_path

    model = WhisperModel(bundled_model_path(), device="cpu", compute_type="int8", cpu_threads=2)

    def hear(x16: np.ndarray) -> str:
        return " ".join(s.text.strip() for s in model.transcribe(x16, beam_size=1, language="en")[0])

    direct = [hear(soxr.resample(x, 24000, 16000).astype(np.float32)) for x in audio24]
    phone = [hear(phone_line(x)) for x in audio24]
    return {"sentences": len(texts), "wer_direct": wer(texts, direct), "wer_mulaw": wer(texts, phone)}


def report(name: str, rows: list[dict], speech: dict[str, float] | None) -> dict:
    lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    p50, p90 = (statistics.median(lat), pct(lat, 0.9)) if lat else (float("nan"), float("nan"))
    out = {"transport": "twilio", "utterances": len(rows), "answered": len(lat), "early": sum(r["early"] for r in rows),
           "p50_ms": p50, "p90_ms": p90, "violations": sum(r["violations"] for r in rows),
           "odd_frames": sum(r["odd_frames"] for r in rows), "reply_wer": speech, "rows": rows}
    print(f"\n=== set: {name} over Twilio Media Streams ({len(rows)} calls) ===")
    print(f"end of speech -> first media out: p50 {p50:.0f} ms, p90 {p90:.0f} ms over {len(lat)}/{len(rows)}; "
          f"early {out['early']}; protocol violations {out['violations']}; frames not 20 ms {out['odd_frames']}")
    if speech:
        print(f"reply audio WER (Whisper, {speech['sentences']:.0f} TTS sentences): direct {speech['wer_direct']:.1%}, "
              f"after the μ-law round trip {speech['wer_mulaw']:.1%}")
    return out
