"""A client of the session protocol (ws://HOST:8000/ws/{id}) that streams PCM in real time.

Used by the end-to-end tests and the latency benchmark; also a small example of
how a client talks to the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

FRAME = 320  # 20 ms at 16 kHz
METRICS_GRACE = 3.0  # seconds to wait for a turn's metrics after its tts_stream_end


def last_voiced_sample(pcm: np.ndarray, drop_db: float = 35.0) -> int:
    """End of the last 20 ms frame within `drop_db` of the clip's loudest frame."""
    n = len(pcm) // FRAME * FRAME
    f = pcm[:n].astype(np.float32).reshape(-1, FRAME) / 32768
    db = 10 * np.log10((f**2).mean(1) + 1e-12)
    voiced = np.nonzero(db > db.max() - drop_db)[0]
    return int(voiced[-1] + 1) * FRAME


@dataclass
class Event:
    t: float  # perf_counter when received
    type: str
    msg: dict[str, Any]


@dataclass
class SessionResult:
    events: list[Event] = field(default_factory=list)
    audio: dict[int, list[np.ndarray]] = field(default_factory=dict)  # turn_id -> 24 kHz chunks
    speech_end: float | None = None  # perf_counter when the last voiced frame was sent
    first_audio: float | None = None  # first audio after speech_end
    early_audio: int = 0  # audio chunks received before speech_end
    close_code: int | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.msg for e in self.events if e.type == kind]

    @property
    def transcripts(self) -> list[str]:
        return [m["text"] for m in self.of("transcript")]

    def audio_seconds(self, turn_id: int | None = None) -> float:
        ids = [turn_id] if turn_id is not None else list(self.audio)
        return sum(len(c) for i in ids for c in self.audio.get(i, [])) / 24000

    @property
    def session_id(self) -> str | None:
        ready = self.of("call_ready")
        return ready[0].get("session_id") if ready else None

    def story(self, log: Path | None = None, lines: int = 40) -> str:
        """For a failure message: the message types in order, and the session's last lines of `log`."""
        out = "events: " + " ".join(e.type for e in self.events)
        if log is not None and self.session_id and log.exists():
            mine = [ln for ln in log.read_text(errors="replace").splitlines() if self.session_id in ln]
            out += f"\nlog of session {self.session_id}:\n" + "\n".join(mine[-lines:])
        return out

    @property
    def latency(self) -> float | None:
        if self.first_audio is None or self.speech_end is None:
            return None
        return self.first_audio - self.speech_end


async def stream_pcm(
    url: str,
    pcm: np.ndarray,
    *,
    lead: float = 0.5,
    tail: float = 2.5,
    init: dict[str, Any] | None = None,
    frame_sizes: list[int] | None = None,
    wait_for_end: float = 25.0,
    extra: list[tuple[float, str]] | None = None,
    loopback: tuple[float, float] | tuple[float, float, float, float] | None = None,
    headers: dict[str, str] | None = None,
    barge: tuple[np.ndarray, float] | None = None,
) -> SessionResult:
    """Send lead silence + pcm + tail silence in real time; collect everything that comes back.

    `frame_sizes` (bytes) overrides the 20 ms framing, e.g. for odd-length frames.
    `extra` is a list of (seconds from start, text frame) to send along the way.
    `loopback=(gain, delay_s)` plays received audio back into the microphone stream,
    like a client without echo cancellation; `(gain, delay_s, rt60_s, noise_dbfs)` adds a
    reverberant room and hiss. `headers`: e.g. an API key. `barge=(pcm2, s)`: the user talks
    over the answer, `pcm2` from `s` seconds after its first audio arrived (needs the tail to hold it).
    Returns after the stream and, once speech ended, a `tts_stream_end` and that turn's
    `metrics` (its last message), or the wait.
    """
    sil = np.zeros(int(16000 * lead), np.int16)
    mic = np.concatenate([sil, pcm.astype(np.int16), np.zeros(int(16000 * tail), np.int16)])
    end_byte = (len(sil) + last_voiced_sample(pcm)) * 2
    res = SessionResult()
    echo = _Loopback(len(mic), *loopback) if loopback else None
    done = asyncio.Event()
    url = url if url.rstrip("/").rsplit("/", 1)[-1] != "ws" else url.rstrip("/") + "/" + uuid.uuid4().hex
    async with websockets.connect(url, max_size=2**24, additional_headers=headers) as ws:
        await ws.send(json.dumps(init or {"agentId": "assistant", "userId": "test", "agentName": "Test"}))

        def talk_over(now: float) -> None:
            nonlocal barge
            if barge is not None and res.first_audio is not None:
                at = int((now - t0 + barge[1]) * 16000)
                part = barge[0][: max(0, len(mic) - at)]
                mic[at : at + len(part)] = np.clip(mic[at : at + len(part)].astype(np.int32) + part, -32768, 32767)
                barge = None

        async def reader() -> None:
            turn = 0
            ended: set[int] = set()  # turns whose tts_stream_end came; their metrics follow it
            try:
                async for raw in ws:
                    now = time.perf_counter()
                    if isinstance(raw, bytes):
                        _audio(res, turn, np.frombuffer(raw, "<f4"), now)
                        talk_over(now)
                        if echo:
                            echo.play(np.frombuffer(raw, "<f4"), now - t0)
                        continue
                    msg = json.loads(raw)
                    res.events.append(Event(now, msg["type"], msg))
                    turn = msg.get("turn_id", turn)
                    if msg["type"] == "interrupted" and echo:
                        echo.stop(now - t0)  # a client stops playing at once: our voice leaves the room
                    if msg["type"] == "tts_stream":
                        d = msg["data"]
                        chunk = np.frombuffer(base64.b64decode(d["chunk"]), "<f4")
                        _audio(res, d["turn_id"], chunk, now)
                        talk_over(now)
                        if echo:
                            echo.play(chunk, now - t0)
                    elif msg["type"] == "tts_stream_end" and res.speech_end is not None:
                        ended.add(msg["turn_id"])
                        asyncio.get_running_loop().call_later(METRICS_GRACE, done.set)  # in case no metrics come
                    elif msg["type"] == "metrics" and msg["turn_id"] in ended:
                        done.set()
            except websockets.ConnectionClosed as exc:
                res.close_code = exc.rcvd.code if exc.rcvd else None
            done.set()

        t0 = time.perf_counter()
        task = asyncio.create_task(reader())
        pending = sorted(extra or [])
        sent, k = 0, 0
        audio = mic.data.cast("B")  # live: a talk-over clip is added to `mic` as the answer arrives
        sizes = frame_sizes or [FRAME * 2]
        while sent < len(audio):
            size = sizes[k % len(sizes)]
            k += 1
            await asyncio.sleep(max(0.0, t0 + sent / 32000 - time.perf_counter()))
            chunk = bytes(audio[sent : sent + size]) if echo is None else echo.mix(mic, sent, size)
            while pending and pending[0][0] <= time.perf_counter() - t0:
                await ws.send(pending.pop(0)[1])
            await ws.send(chunk)
            sent += len(chunk)
            if res.speech_end is None and sent >= end_byte:
                res.speech_end = time.perf_counter()
        try:
            await asyncio.wait_for(done.wait(), wait_for_end)
        except TimeoutError:
            pass
        task.cancel()
    return res


def _audio(res: SessionResult, turn_id: int, chunk: np.ndarray, now: float) -> None:
    if res.speech_end is None:
        res.early_audio += 1
    elif res.first_audio is None:
        res.first_audio = now
    res.audio.setdefault(turn_id, []).append(chunk.astype(np.float32))


class _Loopback:
    """What a client's microphone hears of its own speaker: received audio, delayed and attenuated."""

    def __init__(self, n: int, gain: float, delay: float, rt60: float = 0.0, noise_dbfs: float | None = None) -> None:
        """`rt60` > 0: a synthetic room (shared.audio.room_impulse_response); `noise_dbfs`: hiss added."""
        from shared.audio import resample
        from testing.audio import room_impulse_response, white_noise

        self._resample = resample
        self.buf = np.zeros(n + 16000 * 30, np.float32)
        self.gain, self.delay, self.pos = gain, delay, 0
        self.rir = room_impulse_response(rt60) if rt60 > 0 else None
        self.noise = white_noise(len(self.buf), noise_dbfs) if noise_dbfs is not None else None

    def play(self, chunk24k: np.ndarray, at: float) -> None:
        x = self._resample(chunk24k.astype(np.float32), 24000, 16000) * self.gain
        start = max(self.pos, int((at + self.delay) * 16000))
        self.pos = min(len(self.buf), start + len(x))
        if self.rir is not None:
            x = np.convolve(x, self.rir)  # overlap-add: the room's tail rings on into the next chunk
        end = min(len(self.buf), start + len(x))
        self.buf[start:end] += x[: end - start]

    def stop(self, at: float) -> None:
        """`interrupted`: what was queued to play after `at` is not played."""
        cut = min(len(self.buf), int((at + self.delay) * 16000))
        self.buf[cut:] = 0.0
        self.pos = min(self.pos, cut)

    def mix(self, mic: np.ndarray, start_byte: int, size: int) -> bytes:
        a, b = start_byte // 2, min(len(mic), (start_byte + size) // 2)
        mixed = mic[a:b].astype(np.float32) + self.buf[a:b] * 32768
        if self.noise is not None:
            mixed += self.noise[a:b] * 32768
        return np.clip(mixed, -32768, 32767).astype(np.int16).tobytes()
