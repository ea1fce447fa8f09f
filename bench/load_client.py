"""Simulated users for bench/load.py: one WebSocket session each, several turns, real-time microphone.

A user connects (the init message, then `call_ready`, or a refusal: `error{code}` and
close 1013), then takes its turns on a schedule: turn k starts at `start + k*interval`,
but never before the previous answer has been played (its audio length after its first
chunk, plus a margin), so the server never sees the user talk over the assistant.

- A spoken turn (int16 16 kHz PCM) goes into the microphone stream, which sends 20 ms
  frames in real time for the whole session (silence between turns). End of speech is
  the moment the utterance's last voiced frame is sent (testing.session_client's rule).
- A typed turn is `{"type":"transcript","text"}` (no STT, no detector); its "end of
  speech" is the moment it is sent.

The answer to a turn is the first turn id whose first audio chunk arrives after that
moment; latency = that chunk's arrival - end of speech. No audio within `answer_timeout`
is a dropped turn. Audio of a turn that started before the end of speech is an early
reply (counted, never the answer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from testing.session_client import FRAME, last_voiced_sample

OUT_RATE = 24000
PLAY_MARGIN = 0.6  # s after the answer's audio would have finished playing before the user speaks again
METRICS_GRACE = 3.0  # s to wait for a turn's metrics after its tts_stream_end
REFUSALS = {"server_full", "key_full", "draining", "not_ready"}

TurnInput = str | np.ndarray  # typed text, or int16 PCM at 16 kHz


@dataclass
class TurnResult:
    index: int
    latency: float | None  # s, end of speech -> first audio chunk of the answer; None: dropped
    stages: dict[str, float] = field(default_factory=dict)  # the answering turn's server metrics (ms)
    audio_s: float = 0.0
    early: bool = False  # a reply started before the user had finished


@dataclass
class SessionResult:
    id: str
    admitted: bool = False
    refused: str | None = None  # the error code when the server would not admit the session
    refused_after: float | None = None  # s from connecting to being told
    queued: int | None = None  # the first place in the queue the server gave, if it was full
    queued_after: float | None = None  # s from connecting to being told the place
    waited: float | None = None  # s from being queued to call_ready
    close_code: int | None = None
    error: str | None = None  # anything unexpected (connection lost, no call_ready)
    turns: list[TurnResult] = field(default_factory=list)


@dataclass
class _Audio:
    """What arrived of one server turn."""

    first: float
    samples: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stages: dict[str, float] | None = None
    got_metrics: asyncio.Event = field(default_factory=asyncio.Event)


class SimUser:
    def __init__(self, url: str, session_id: str, turns: list[TurnInput], *, start: float, interval: float,
                 mic: bool, answer_timeout: float = 15.0, init: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/") + "/" + session_id
        self.plan, self.start, self.interval, self.mic = turns, start, interval, mic
        self.answer_timeout = answer_timeout
        self.init = init or {"agentId": "assistant", "userId": session_id, "agentName": "Load"}
        self.res = SessionResult(session_id)
        self._audio: dict[int, _Audio] = {}
        self._new_audio = asyncio.Event()
        self._closed = asyncio.Event()
        self._utterance: np.ndarray | None = None  # PCM the microphone is sending now
        self._spoken: asyncio.Future[float] | None = None  # resolves at the utterance's end of speech

    async def run(self) -> SessionResult:
        await asyncio.sleep(max(0.0, self.start - time.perf_counter()))
        t0 = time.perf_counter()
        try:
            async with websockets.connect(self.url, max_size=2**24, open_timeout=10) as ws:
                if await self._admitted(ws, t0):
                    await self._session(ws)
        except websockets.InvalidStatus as exc:  # refused before the handshake (rate limit, credentials)
            self.res.refused, self.res.refused_after = f"http_{exc.response.status_code}", time.perf_counter() - t0
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            self.res.error = self.res.error or f"{type(exc).__name__}: {exc}"
        if self.res.admitted:  # turns the session never got to are dropped too
            done = len(self.res.turns)
            self.res.turns += [TurnResult(i, None) for i in range(done, len(self.plan))]
        return self.res

    async def _admitted(self, ws: websockets.ClientConnection, t0: float) -> bool:
        await ws.send(json.dumps(self.init))
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            while msg.get("type") == "queued":  # the server is full: wait for a place (or a refusal)
                if self.res.queued is None:
                    self.res.queued, self.res.queued_after = msg["position"], time.perf_counter() - t0
                msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
        except websockets.ConnectionClosed as exc:
            self.res.close_code = exc.rcvd.code if exc.rcvd else None
            self.res.error = "closed before call_ready"
            return False
        if msg.get("type") == "call_ready":
            self.res.admitted = True
            if self.res.queued_after is not None:  # the turns' schedule starts when the session does
                self.res.waited = time.perf_counter() - t0 - self.res.queued_after
                self.start = time.perf_counter()
            return True
        if msg.get("type") == "error" and msg.get("code") in REFUSALS:
            self.res.refused, self.res.refused_after = msg["code"], time.perf_counter() - t0
            with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)  # the close frame follows
            self.res.close_code = ws.close_code
        else:
            self.res.error = f"unexpected first message {msg.get('type')}: {msg.get('code', '')}"
        return False

    async def _session(self, ws: websockets.ClientConnection) -> None:
        tasks = [asyncio.create_task(self._reader(ws))]
        if self.mic:
            tasks.append(asyncio.create_task(self._microphone(ws)))
        try:
            ready_at = time.perf_counter()
            for k, turn in enumerate(self.plan):
                if self._closed.is_set():
                    break
                await asyncio.sleep(max(0.0, self.start + k * self.interval - time.perf_counter(), ready_at - time.perf_counter()))
                result, ready_at = await self._turn(ws, k, turn)
                self.res.turns.append(result)
        finally:
            for t in tasks:
                t.cancel()

    async def _turn(self, ws: websockets.ClientConnection, k: int, turn: TurnInput) -> tuple[TurnResult, float]:
        begin = time.perf_counter()
        if isinstance(turn, str):
            end = time.perf_counter()
            await ws.send(json.dumps({"type": "transcript", "text": turn}))
        else:
            self._spoken = asyncio.get_running_loop().create_future()
            self._utterance = turn
            try:  # the microphone resolves it; it stops if the connection goes
                end = await asyncio.wait_for(asyncio.shield(self._spoken), len(turn) / 16000 + 5)
            except TimeoutError:
                return TurnResult(k, None), time.perf_counter()
        early = any(begin <= a.first <= end for a in self._audio.values())
        answer = await self._first_audio_after(end)
        if answer is None:
            return TurnResult(k, None, early=early), time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answer.ended.wait(), self.answer_timeout)
            await asyncio.wait_for(answer.got_metrics.wait(), METRICS_GRACE)
        audio_s = answer.samples / OUT_RATE
        result = TurnResult(k, answer.first - end, dict(answer.stages or {}), audio_s, early)
        return result, answer.first + audio_s + PLAY_MARGIN

    async def _first_audio_after(self, end: float) -> _Audio | None:
        deadline = end + self.answer_timeout
        while True:
            later = [a for a in self._audio.values() if a.first > end]
            if later:
                return min(later, key=lambda a: a.first)
            left = deadline - time.perf_counter()
            if left <= 0 or self._closed.is_set():
                return None
            self._new_audio.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_audio.wait(), left)

    async def _reader(self, ws: websockets.ClientConnection) -> None:
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    self._on_message(json.loads(raw), time.perf_counter())
        except websockets.ConnectionClosed as exc:
            self.res.close_code = exc.rcvd.code if exc.rcvd else None
        finally:
            if self.res.close_code is None:
                self.res.close_code = ws.close_code
            self._closed.set()
            self._new_audio.set()
            for a in self._audio.values():
                a.ended.set()
                a.got_metrics.set()

    def _on_message(self, msg: dict[str, Any], now: float) -> None:
        kind = msg["type"]
        if kind == "tts_stream":
            d = msg["data"]
            a = self._audio.get(d["turn_id"])
            if a is None:
                a = self._audio[d["turn_id"]] = _Audio(now)
                self._new_audio.set()
            a.samples += len(base64.b64decode(d["chunk"])) // 4
        elif kind in ("tts_stream_end", "interrupted") and msg["turn_id"] in self._audio:
            self._audio[msg["turn_id"]].ended.set()
        elif kind == "metrics" and msg["turn_id"] in self._audio:
            a = self._audio[msg["turn_id"]]
            a.stages = msg["stages"]
            a.got_metrics.set()
        elif kind == "error" and not msg.get("recoverable", True):
            self.res.error = f"error {msg.get('code')}: {msg.get('message', '')[:80]}"

    async def _microphone(self, ws: websockets.ClientConnection) -> None:
        """20 ms frames in real time: the current utterance, else silence."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._stream(ws)

    async def _stream(self, ws: websockets.ClientConnection) -> None:
        silence = np.zeros(FRAME, np.int16).tobytes()
        t0, frames, pos, end = time.perf_counter(), 0, 0, 0
        while True:
            await asyncio.sleep(max(0.0, t0 + frames * FRAME / 16000 - time.perf_counter()))
            utt = self._utterance
            if utt is None:
                await ws.send(silence)
            else:
                if pos == 0:
                    end = last_voiced_sample(utt)
                chunk = utt[pos : pos + FRAME]
                await ws.send(np.pad(chunk, (0, FRAME - len(chunk))).tobytes())
                pos += FRAME
                if pos >= end and self._spoken is not None and not self._spoken.done():
                    self._spoken.set_result(time.perf_counter())
                if pos >= len(utt):
                    self._utterance, pos = None, 0
            frames += 1
