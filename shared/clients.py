"""Network clients the session server uses for the three services.

Errors are translated here, at the boundary, into `UpstreamError` with a
`retryable` flag and the service's name, so the session can tell the user what failed.
Whether a failure is retryable is decided here, once (`retryable_status`); how it is
retried is shared.replicas.on_replicas, the one retry policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import websockets

from shared.audio import as_pcm16, f32le_to_float
from shared.protocol import ToolCall
from shared.replicas import Replica, ReplicaError, Replicas, on_replicas, streamed
from shared.security import service_headers
from shared.service import ServiceError
from shared.sse import iter_sse_items

__all__ = ["ChatClient", "Speech", "SpeechAudio", "SpeechEnd", "SpeechEvent", "SttClient", "TtsStream", "UpstreamError", "on_replicas",
           "retryable_status"]

log = logging.getLogger("clients")
PUBLIC = {"stt": "speech recognition", "chat": "the language model", "tts": "speech synthesis"}
WS_ERRORS = (OSError, websockets.WebSocketException, TimeoutError)


def retryable_status(status: int) -> bool:
    """The one retryable rule for an answer: timeouts (408), rate limits (429) and server
    errors (5xx) may pass; any other refusal is the request's own and would repeat."""
    return status in (408, 429) or status >= 500


class UpstreamError(ReplicaError):
    """A failed call to one of our services. `message` is for the user (short, no upstream
    text); `detail` is for the log; `retryable` says whether trying again may succeed."""

    def __init__(self, service: str, message: str, retryable: bool = True, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{service}: {message}" + (f" ({detail})" if detail else ""))
        self.service, self.message, self.retryable, self.detail = service, message, retryable, detail
        self.status = status  # the service's HTTP status, when it answered at all

    @classmethod
    def unreachable(cls, service: str, exc: BaseException) -> UpstreamError:
        """No answer: a connection error or a timeout (always retryable)."""
        return cls(service, f"{PUBLIC[service]} is unavailable right now", True, type(exc).__name__)

    @classmethod
    def refused(cls, service: str, status: int, detail: str = "") -> UpstreamError:
        """The service answered `status`; retryable by `retryable_status`."""
        retryable = retryable_status(status)
        what = "is busy or restarting" if retryable else "refused the request"
        return cls(service, f"{PUBLIC[service]} {what}", retryable, detail, status)

    @classmethod
    def of_response(cls, service: str, r: httpx.Response) -> UpstreamError:
        return cls.refused(service, r.status_code, _detail(r))

    @property
    def bad_request(self) -> bool:
        """Our service refused the request itself (too long, invalid options): the caller's fault."""
        return self.status is not None and 400 <= self.status < 500 and not retryable_status(self.status)


class SttClient:
    def __init__(self, http: httpx.AsyncClient, target: str | Replicas) -> None:
        self.http, self.replicas = http, Replicas.of("stt", target)

    async def _post(self, path: str, answered: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
                    **kwargs: Any) -> httpx.Response:
        """POST to a replica (with the retry policy); `answered` says which answers are not failures."""
        async def once(replica: Replica) -> httpx.Response:
            try:
                r = await self.http.post(replica.url.rstrip("/") + path, **kwargs)
            except httpx.HTTPError as exc:
                raise UpstreamError.unreachable("stt", exc) from exc
            if not answered(r):
                raise UpstreamError.of_response("stt", r)
            return r

        return await on_replicas(self.replicas, once)

    async def transcribe(self, audio: np.ndarray) -> str:
        """16 kHz int16 (as the socket sent it) or float32; sent as raw int16 PCM (no container to decode)."""
        return (await self.transcribe_words(audio)).text

    async def transcribe_words(self, audio: np.ndarray) -> Words:
        """... and how sure the STT is that the words end a sentence."""
        pcm = as_pcm16(audio).tobytes()
        body = (await self._post("/transcribe", files={"audio_file": ("utterance.pcm", pcm, "audio/l16")})).json()
        end = body.get("sentence_end")
        return Words(str(body["text"]).strip(), None if end is None else float(end))

    async def transcribe_file(self, data: bytes, filename: str, content_type: str, form: dict[str, str] | None = None) -> dict[str, Any]:
        """Any file the STT service decodes (it also resamples): its JSON answer (text,
        language, duration, segments). A refusal keeps the service's status."""
        r = await self._post("/transcribe", files={"file": (filename, data, content_type)}, data=form or {})
        body = r.json()
        return body if isinstance(body, dict) else {}

    async def end_of_turn(self, audio: np.ndarray) -> float | None:
        """Smart Turn's P(the speech sounds finished) for the last 8 s; None if the model is not there."""
        pcm = as_pcm16(audio[-8 * 16000 :]).tobytes()

        def answered(r: httpx.Response) -> bool:
            return r.status_code == 200 or (r.status_code == 503 and not r.json().get("retryable", True))  # 503: not installed

        r = await self._post("/end-of-turn", answered, content=pcm, headers={"content-type": "audio/l16"}, timeout=3.0)
        return float(r.json()["probability"]) if r.status_code == 200 else None


@dataclass(frozen=True)
class Words:
    """A transcript, and how sure the STT is that it ends a sentence (Whisper's P(. ? !); None: unknown)."""

    text: str
    sentence_end: float | None = None


class ChatClient:
    def __init__(self, http: httpx.AsyncClient, target: str | Replicas) -> None:
        self.http, self.replicas = http, Replicas.of("chat", target)

    def _completions(self, replica: Replica) -> str:
        return replica.url.rstrip("/") + "/v1/chat/completions"

    async def stream(
        self, messages: list[dict[str, Any]], on_end_of_turn: Callable[[float], None] | None = None, **options: Any
    ) -> AsyncIterator[str | ToolCall]:
        """Text deltas over server-sent events, and the tools the reply calls (when `tools`
        were offered); leaving the loop closes the request, which stops generation on the
        chat service. With `on_end_of_turn`, asks the chat service how finished the user's
        last message reads (if its engine can tell). A failure before the first delta is
        retried; after it, it is the caller's."""
        body = {"messages": messages, "stream": True, "end_of_turn": on_end_of_turn is not None, **options}

        async def deltas(replica: Replica) -> AsyncGenerator[str | ToolCall]:
            async with self._open(replica, body) as r:
                try:
                    async for delta in iter_sse_items(r.aiter_lines(), on_end_of_turn):
                        yield delta
                except ServiceError as exc:  # an error event inside the stream
                    raise UpstreamError("chat", f"{PUBLIC['chat']} failed", retryable_status(exc.status), exc.message, exc.status) from exc

        async for delta in streamed(self.replicas, deltas):
            yield delta

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (`stream` false): the service's JSON answer."""
        async def once(replica: Replica) -> dict[str, Any]:
            try:
                r = await self.http.post(self._completions(replica), json={**body, "stream": False})
            except httpx.HTTPError as exc:
                raise UpstreamError.unreachable("chat", exc) from exc
            if r.status_code != 200:
                raise UpstreamError.of_response("chat", r)
            return dict(r.json())

        return await on_replicas(self.replicas, once)

    async def relay(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The service's event stream (`stream` true) as it sends it, bytes untouched."""
        async def raw(replica: Replica) -> AsyncGenerator[bytes]:
            async with self._open(replica, {**body, "stream": True}) as r:
                async for chunk in r.aiter_raw():
                    yield chunk

        async for chunk in streamed(self.replicas, raw):
            yield chunk

    @contextlib.asynccontextmanager
    async def _open(self, replica: Replica, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """A streamed POST answered 200, else UpstreamError (the body read for the log)."""
        try:
            async with self.http.stream("POST", self._completions(replica), json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise UpstreamError.of_response("chat", r)
                yield r
        except httpx.HTTPError as exc:
            raise UpstreamError.unreachable("chat", exc) from exc


class TtsStream:
    """One WebSocket to the TTS service (one per turn: closing it is the cancel)."""

    def __init__(self, ws: websockets.ClientConnection, replica: Replica | None = None, pool: Replicas | None = None) -> None:
        self.ws, self.replica, self.pool = ws, replica, pool
        if replica is not None:
            replica.in_flight += 1  # held for the connection's life: a turn's speech is one stream

    @classmethod
    async def connect(cls, target: str | Replicas, *, close_timeout: float = 10.0) -> TtsStream:
        """A stream on the least-loaded TTS replica, with the retry policy; `close_timeout`
        bounds how long close() waits for a peer that does not answer the close."""
        pool = Replicas.of("tts", target)

        async def once(replica: Replica) -> TtsStream:
            try:
                ws = await websockets.connect(replica.url, max_size=2**24, open_timeout=5, close_timeout=close_timeout,
                                              additional_headers=service_headers())
            except WS_ERRORS as exc:
                raise UpstreamError.unreachable("tts", exc) from exc
            return cls(ws, replica, pool)

        return await on_replicas(pool, once)

    async def speak(self, text: str, voice: str | None, ident: str) -> None:
        msg = {"type": "speak", "text": text, "id": ident}
        if voice:
            msg["voice"] = voice
        try:
            await self.ws.send(json.dumps(msg))
        except websockets.WebSocketException as exc:
            raise _lost() from exc

    async def recv(self, idle_timeout: float | None = 20.0) -> bytes | dict[str, Any] | None:
        """The next message as it came: audio bytes (24 kHz float32 LE) or a control message;
        None once the stream was closed normally."""
        try:
            msg = await asyncio.wait_for(self.ws.recv(), idle_timeout)
        except websockets.ConnectionClosedOK:
            return None
        except TimeoutError as exc:
            raise UpstreamError("tts", f"{PUBLIC['tts']} did not answer", True, f"no answer for {idle_timeout:.0f}s") from exc
        except websockets.WebSocketException as exc:
            raise _lost() from exc
        if isinstance(msg, bytes):
            return msg
        event = json.loads(msg)
        return event if isinstance(event, dict) else {"type": "unknown"}

    async def events(self, idle_timeout: float = 20.0) -> AsyncIterator[np.ndarray | dict[str, Any]]:
        """Audio frames (24 kHz float32) and control messages ({"type":"end"|"error",...})."""
        while (msg := await self.recv(idle_timeout)) is not None:
            yield f32le_to_float(msg) if isinstance(msg, bytes) else msg

    async def close(self) -> None:
        if self.replica is not None:
            self.replica.in_flight -= 1
            self.replica = None
        await self.ws.close()


@dataclass
class SpeechAudio:
    """Audio of piece `piece`: 24 kHz float32 little-endian mono, passed through as received."""

    piece: int
    pcm: bytes


@dataclass
class SpeechEnd:
    """Piece `piece` is fully spoken, or failed (`error`: the service's text, for the log)."""

    piece: int
    error: str | None = None


SpeechEvent = SpeechAudio | SpeechEnd


class Speech:
    """One answer's speech on the TTS pool: pieces of text in (say), their audio out in
    order (events), over one stream; closing it is the cancel.

    A replica lost mid-answer is marked failed and the speech goes on on another: the
    pieces not yet ended are sent again and the samples of the current piece already
    yielded are skipped (Piper is deterministic, so the resent piece starts the same)."""

    MAX_FAILOVERS = 2  # per answer: a third lost replica ends it
    IDLE_TIMEOUT = 20.0  # s without a message while pieces are pending: the replica is lost
    CLOSE_WAIT = 0.25  # s close() waits for the socket; a slow peer is left to close in the background

    def __init__(self, stream: TtsStream, pool: Replicas, voice: str | None) -> None:
        self.pool, self.voice = pool, voice
        self._stream = stream
        self._texts: list[str] = []
        self._ended = 0  # pieces ended: audio that arrives is piece `_ended`'s
        self._yielded = 0  # bytes of piece `_ended` already yielded
        self._skip = 0  # bytes of piece `_ended` to drop: resent after a fail-over, already yielded
        self._failovers = 0
        self._closed = False
        self._sending = asyncio.Lock()  # pieces go out in order, resends after a fail-over included

    @classmethod
    async def open(cls, pool: Replicas, voice: str | None) -> Speech:
        """Connects to the least-loaded TTS replica (with the retry policy)."""
        return cls(await TtsStream.connect(pool, close_timeout=1.0), pool, voice)

    @property
    def pending(self) -> int:
        """Pieces said and not yet ended."""
        return len(self._texts) - self._ended

    async def say(self, text: str) -> int:
        """Queue a piece; returns its index (events carry it)."""
        async with self._sending:
            index = len(self._texts)
            self._texts.append(text)
            if not self._closed:
                try:
                    await self._stream.speak(text, self.voice, str(index))
                except UpstreamError:
                    pass  # events() finds the stream broken and fails over, this piece included
            return index

    async def events(self) -> AsyncIterator[SpeechEvent]:
        """Audio and ends, in piece order, until close(). Raises UpstreamError when the
        speech cannot go on (no other replica, or too many lost)."""
        while not self._closed:
            try:
                msg = await self._stream.recv(self.IDLE_TIMEOUT if self.pending else None)
            except UpstreamError as exc:
                if self._closed:
                    return
                await self._fail_over(exc)
                continue
            if self._closed:
                return
            if msg is None:  # the replica closed the stream (it is draining): go on elsewhere
                await self._fail_over(UpstreamError("tts", f"{PUBLIC['tts']} was interrupted", True, "closed by the service"))
            elif isinstance(msg, bytes):
                if audio := self._audio(msg):
                    yield audio
            elif (end := self._end(msg)) is not None:
                yield end

    def _audio(self, pcm: bytes) -> SpeechAudio | None:
        if not self.pending:
            return None  # nothing asked for: stale
        if self._skip:
            cut = min(self._skip, len(pcm))
            self._skip -= cut
            pcm = pcm[cut:]
            if not pcm:
                return None
        self._yielded += len(pcm)
        return SpeechAudio(self._ended, pcm)

    def _end(self, msg: dict[str, Any]) -> SpeechEnd | None:
        kind = msg.get("type")
        if kind not in ("end", "error") or not self.pending:
            return None
        if kind == "error" and msg.get("id") is None:  # about the stream, not a piece: a close follows, or nothing
            log.warning("tts stream error: %s", str(msg.get("message", ""))[:200])
            return None
        end = SpeechEnd(self._ended, str(msg.get("message", "speech synthesis failed"))[:300] if kind == "error" else None)
        self._ended += 1
        self._yielded = self._skip = 0
        return end

    async def _fail_over(self, exc: UpstreamError) -> None:
        """The replica is lost: speak what is not yet ended on another one (or raise `exc`)."""
        if len(self.pool.replicas) < 2 or self._failovers >= self.MAX_FAILOVERS:
            raise exc
        self._failovers += 1
        old = self._stream
        if old.replica is not None:
            self.pool.failed(old.replica)
        async with self._sending:
            new = await TtsStream.connect(self.pool, close_timeout=1.0)  # raises when no replica answers
            self._stream = new
            _close_soon(old)
            if self._closed:
                _close_soon(new)
                return
            self._skip = self._yielded
            try:
                for i in range(self._ended, len(self._texts)):
                    await new.speak(self._texts[i], self.voice, str(i))
            except UpstreamError:
                pass  # the new stream broke at once: the next recv fails over again
        log.warning("tts replica lost (%s); %d piece(s) resent to another", exc.detail or exc.message, self.pending)

    async def close(self) -> None:
        """The cancel: nothing more is yielded; the socket closes in the background if slow."""
        if self._closed:
            return
        self._closed = True
        await asyncio.wait({_close_soon(self._stream)}, timeout=self.CLOSE_WAIT)


_closing: set[asyncio.Task[None]] = set()


def _close_soon(stream: TtsStream) -> asyncio.Task[None]:
    async def close() -> None:
        with contextlib.suppress(Exception):
            await stream.close()

    task = asyncio.create_task(close())
    _closing.add(task)  # a reference until it is done
    task.add_done_callback(_closing.discard)
    return task


def _lost() -> UpstreamError:
    return UpstreamError("tts", f"{PUBLIC['tts']} was interrupted", True, "connection lost")


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
        return f"{r.status_code}: {str(body.get('error', r.text) if isinstance(body, dict) else r.text)[:200]}"
    except ValueError:
        return f"{r.status_code}: {r.text[:200]}"
