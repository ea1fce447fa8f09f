"""A stand-in for Twilio: replays the Media Streams protocol, as Twilio documents it, to our
telephony endpoint (ws://HOST:8000/telephony/twilio), with speech from WAV files.

It sends `connected` and `start` (made-up SIDs), then the caller's audio as 20 ms μ-law
`media` frames at real-time pace (or `speed` times faster), silence included, as a phone line
does. What comes back is played on a simulated clock: each `mark` is echoed once the audio sent
before it would have played, and a `clear` drops what is queued and echoes the pending marks
at once, as Twilio does. The result has the reply audio (16 kHz int16) and, per utterance, the
time from its end of speech to our first `media` frame.

    result = await call("ws://127.0.0.1:8000/telephony/twilio", [Path("a.wav")])
    print(result.latencies())
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.server.telephony.g711 import FRAME_BYTES, PHONE_RATE, SILENCE, Inbound, encode

FRAME_S = FRAME_BYTES / PHONE_RATE  # 20 ms


def sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def phone_frames(path: Path | str) -> tuple[list[bytes], int]:
    """A WAV file as 20 ms μ-law frames at 8 kHz, and the number of frames up to the end of its
    last voiced frame (within 35 dB of its loudest), which is where its speech ends."""
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = soxr.resample(x.mean(axis=1), rate, PHONE_RATE, quality="HQ")
    n = -(-len(x) // FRAME_BYTES)
    x = np.pad(x, (0, n * FRAME_BYTES - len(x)))
    db = 10 * np.log10((x.reshape(n, FRAME_BYTES) ** 2).mean(axis=1) + 1e-12)
    voiced = np.nonzero(db > db.max() - 35.0)[0]
    data = encode((np.clip(x, -1, 32767 / 32768) * 32768).round().astype(np.int16))
    frames = [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]
    return frames, int(voiced[-1]) + 1 if voiced.size else n


@dataclass
class Turn:
    """One utterance of the caller and what came back while it was the latest."""

    wav: str
    speech_end: float | None = None  # perf_counter when its last voiced frame went out
    first_media: float | None = None  # our first `media` frame after that
    audio: list[np.ndarray] = field(default_factory=list)  # 16 kHz int16, as received
    early_media: int = 0  # media frames received while the caller was still speaking

    @property
    def latency(self) -> float | None:
        """End of speech -> first media out, seconds."""
        if self.speech_end is None or self.first_media is None:
            return None
        return self.first_media - self.speech_end

    @property
    def reply(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


@dataclass
class CallResult:
    stream_sid: str
    call_sid: str
    turns: list[Turn] = field(default_factory=list)
    greeting: list[np.ndarray] = field(default_factory=list)  # audio before the first utterance
    media_frames: int = 0
    odd_frames: int = 0  # media payloads that are not 20 ms (Twilio plays them, but we promise 160 bytes)
    marks: list[str] = field(default_factory=list)  # mark names we received, in order
    echoed: list[str] = field(default_factory=list)  # mark names sent back, in order
    clears: list[float] = field(default_factory=list)  # perf_counter of each `clear`
    cleared_s: float = 0.0  # reply audio a `clear` dropped before it played
    violations: list[str] = field(default_factory=list)  # our messages that Twilio would not accept
    close_code: int | None = None
    close_reason: str = ""  # the server's, when it hung up

    def latencies(self) -> list[float]:
        return [t.latency for t in self.turns if t.latency is not None]

    def audio(self) -> np.ndarray:
        """Everything that came back, 16 kHz int16."""
        parts = self.greeting + [a for t in self.turns for a in t.audio]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class _FakeTwilio:
    def __init__(self, ws: ClientConnection, result: CallResult, speed: float) -> None:
        self.ws, self.result, self.speed = ws, result, speed
        self.seq = 0
        self.chunk = 0
        self.t0 = time.perf_counter()
        self.turn: Turn | None = None
        self.play_until = 0.0  # perf_counter when the queued reply audio would have played
        self.last_media = 0.0
        self.pending: dict[asyncio.Task[None], str] = {}  # mark echoes waiting for playback
        self.decoder = Inbound("mulaw")

    async def send(self, msg: dict[str, Any]) -> None:
        self.seq += 1
        await self.ws.send(json.dumps({"event": msg.pop("event"), "sequenceNumber": str(self.seq), **msg}))

    async def media(self, frame: bytes) -> None:
        self.chunk += 1
        ts = str(round(self.chunk * FRAME_S * 1000))
        payload = base64.b64encode(frame).decode()
        await self.send({"event": "media", "streamSid": self.result.stream_sid,
                         "media": {"track": "inbound", "chunk": str(self.chunk), "timestamp": ts, "payload": payload}})

    # ------------------------------------------------------------------ what the server sends

    async def receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in self.ws:
                self.on_message(text)
        self.result.close_code = self.ws.close_code
        self.result.close_reason = self.ws.close_reason or ""

    def on_message(self, text: str | bytes) -> None:
        r = self.result
        try:
            msg = json.loads(text)
            event = msg["event"]
        except (ValueError, KeyError, TypeError):
            r.violations.append(f"not a Media Streams message: {str(text)[:80]}")
            return
        if msg.get("streamSid") != r.stream_sid:
            r.violations.append(f"{event} with streamSid {msg.get('streamSid')!r}")
        if event == "media":
            self.on_media(msg)
        elif event == "mark":
            name = str(msg.get("mark", {}).get("name", ""))
            r.marks.append(name)
            task = asyncio.create_task(self.echo_when_played(name, self.play_until))
            self.pending[task] = name
            task.add_done_callback(lambda t: self.pending.pop(t, None))
        elif event == "clear":
            now = time.perf_counter()
            r.clears.append(now)
            r.cleared_s += max(0.0, self.play_until - now) * self.speed
            self.play_until = now
            for task, name in list(self.pending.items()):  # Twilio echoes the dropped marks at once
                task.cancel()
                asyncio.create_task(self.echo(name))
        else:
            r.violations.append(f"unknown event {event!r}")

    def on_media(self, msg: dict[str, Any]) -> None:
        r = self.result
        try:
            payload = base64.b64decode(msg["media"]["payload"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            r.violations.append("media without a base64 payload")
            return
        now = self.last_media = time.perf_counter()
        r.media_frames += 1
        r.odd_frames += len(payload) != FRAME_BYTES
        self.play_until = max(now, self.play_until) + len(payload) / PHONE_RATE / self.speed
        pcm = np.frombuffer(self.decoder.push(payload), "<i2")
        if self.turn is None:
            r.greeting.append(pcm)
            return
        self.turn.audio.append(pcm)
        if self.turn.speech_end is None:
            self.turn.early_media += 1
        if self.turn.speech_end is not None and self.turn.first_media is None:
            self.turn.first_media = now

    async def echo_when_played(self, name: str, due: float) -> None:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await self.echo(name)

    async def echo(self, name: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send({"event": "mark", "streamSid": self.result.stream_sid, "mark": {"name": name}})
            self.result.echoed.append(name)

    # ------------------------------------------------------------------ the caller's side

    async def pace(self) -> None:
        """Wait until the next frame is due (frames go out at `speed` times real time)."""
        due = self.t0 + self.chunk * FRAME_S / self.speed
        await asyncio.sleep(max(0.0, due - time.perf_counter()))

    async def silence(self, seconds: float) -> None:
        for _ in range(round(seconds / FRAME_S)):
            await self.pace()
            await self.media(bytes([SILENCE["mulaw"]]) * FRAME_BYTES)

    async def say(self, path: Path | str) -> None:
        frames, voiced = phone_frames(path)
        self.turn = Turn(str(path))
        self.result.turns.append(self.turn)
        for i, frame in enumerate(frames):
            await self.pace()
            await self.media(frame)
            if i + 1 == voiced:
                self.turn.speech_end = time.perf_counter()

    async def await_reply(self, timeout: float, settle: float) -> None:
        """Silence until the reply to the last utterance has come and played (no media for
        `settle` s), or `timeout` s after its end of speech."""
        assert self.turn is not None
        end = (self.turn.speech_end or time.perf_counter()) + timeout
        while time.perf_counter() < end:
            now = time.perf_counter()
            if self.turn.first_media is not None and now > self.play_until and now - self.last_media > settle:
                return
            await self.silence(FRAME_S)


async def call(
    url: str,
    wav_paths: Sequence[Path | str],
    *,
    speed: float = 1.0,
    pause_s: float | None = None,
    reply_timeout_s: float = 20.0,
    settle_s: float = 0.8,
    lead_in_s: float = 0.5,
    custom_parameters: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    open_timeout: float = 10.0,
) -> CallResult:
    """One call: each WAV is an utterance of the caller.

    After an utterance the line carries silence until the reply has played (`settle_s` without
    new audio) or `reply_timeout_s`; with `pause_s`, exactly that much silence instead, so the
    next utterance may talk over the reply (barge-in). `speed` > 1 sends (and plays) faster
    than real time; latencies then are in wall-clock seconds."""
    if not speed > 0 or speed == float("inf"):
        raise ValueError("speed must be a positive, finite factor")
    result = CallResult(stream_sid=sid("MZ"), call_sid=sid("CA"))
    account = sid("AC")
    async with connect(url, additional_headers=dict(headers or {}), open_timeout=open_timeout, max_size=2**20) as ws:
        twilio = _FakeTwilio(ws, result, speed)
        receiver = asyncio.create_task(twilio.receive())
        try:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await twilio.send({
                "event": "start", "streamSid": result.stream_sid,
                "start": {"streamSid": result.stream_sid, "accountSid": account, "callSid": result.call_sid,
                          "tracks": ["inbound"], "customParameters": dict(custom_parameters or {}),
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": PHONE_RATE, "channels": 1}},
            })
            twilio.t0 = time.perf_counter()
            await twilio.silence(lead_in_s)
            for path in wav_paths:
                await twilio.say(path)
                if pause_s is not None:
                    await twilio.silence(pause_s)
                else:
                    await twilio.await_reply(reply_timeout_s, settle_s)
            if twilio.pending:  # the marks of audio that has played (or is about to) go back before the call ends
                await asyncio.wait(list(twilio.pending), timeout=2.0)
            await twilio.send({"event": "stop", "streamSid": result.stream_sid,
                               "stop": {"accountSid": account, "callSid": result.call_sid}})
        except ConnectionClosed:
            pass  # the server hung up: the result says what came until then
        finally:
            for task in list(twilio.pending):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(receiver, 2.0)
    return result
