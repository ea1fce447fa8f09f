"""Twilio Media Streams (bidirectional, `<Connect><Stream>`): a session `Channel` over its
messages (messages.py), and the loop that serves one call's WebSocket.

Twilio sends `connected`, `start`, then `media` (base64 μ-law, 8 kHz mono, 20 ms a frame),
`mark` (a mark of ours whose audio has played, or was dropped by a `clear`), `dtmf` and `stop`.
We send `media`, `mark` after each chunk of a reply, and `clear` on a barge-in. The marks are the
playback acks of the session protocol: a mark named "turn:ms" comes back when the caller has
heard `ms` of that turn.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed

from services.server.telephony.g711 import ENCODINGS, FRAME_BYTES, PHONE_RATE, Inbound, Law, Outbound
from services.server.telephony.messages import (
    ClearOut,
    Connected,
    Dtmf,
    Mark,
    MarkName,
    MarkOut,
    Media,
    MediaOut,
    MediaPayload,
    Start,
    Stop,
    UnknownEvent,
    mark_name,
    parse_mark,
    parse_message,
)
from shared.protocol import Interrupted, PlaybackIn, Resumed, TtsStreamEnd, _Out, first_error

log = logging.getLogger("server.telephony")

HANDSHAKE_TIMEOUT = 10.0  # seconds for `connected` and `start` to arrive
MAX_MESSAGE_CHARS = 32_768  # a text frame longer than this is not parsed at all
MAX_PAYLOAD_CHARS = 16_384  # base64 of one media payload (~1.5 s of μ-law; Twilio sends 20 ms)
MAX_MARKS = 4096  # marks remembered while Twilio plays (one a chunk sent)
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR = 1000, 1008, 1011
# what a receive raises once the socket is gone (Starlette server side, websockets client side)
DISCONNECTED = (WebSocketDisconnect, ConnectionClosed, RuntimeError, OSError)

# --------------------------------------------------------------------------- the channel


class MediaSocket(Protocol):
    """What we need of the WebSocket (Starlette's has it; so do the test fakes)."""

    async def receive_text(self) -> str: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class TwilioChannel:
    """A session `Channel` that speaks Media Streams: reply audio as μ-law `media` frames, each
    chunk followed by a `mark`; `interrupted` as `clear`; the rest of the session protocol has no
    Twilio equivalent and is not sent."""

    def __init__(self, ws: MediaSocket, stream_sid: str, law: Law = "mulaw") -> None:
        self.ws, self.stream_sid = ws, stream_sid
        self._encoder = Outbound(law)
        self._turn: int | None = None  # the turn the encoder holds audio of
        self._sent_ms: OrderedDict[int, int] = OrderedDict()  # turn -> ms of its audio sent
        self._marks: OrderedDict[str, bool] = OrderedDict()  # marks at Twilio -> still playable
        self.clears = 0
        self.observers: list[Callable[[_Out], None]] = []  # see every message first (call screening)
        self.muted = False  # the session's audio no longer reaches the call (a machine answered)

    async def send(self, msg: _Out) -> None:
        for observe in self.observers:
            observe(msg)
        if self.muted:
            return
        if isinstance(msg, Interrupted):
            await self._clear()
        elif isinstance(msg, Resumed):  # the audio from `from_ms` comes again: what Twilio plays counts from there
            self._sent_ms[msg.turn_id] = int(msg.from_ms)
        elif isinstance(msg, TtsStreamEnd):
            if msg.turn_id == self._turn:  # the reply's last partial frame, padded
                await self._send_frames(msg.turn_id, self._encoder.flush())
                self._turn = None
        else:
            log.debug("not sent to Twilio: %s", getattr(msg, "type", type(msg).__name__))

    async def send_audio(self, turn_id: int, pcm: bytes) -> None:
        """24 kHz float32 LE mono in; 20 ms μ-law `media` frames and one `mark` out."""
        if not self.muted:
            await self.play(turn_id, pcm)

    async def mute(self) -> None:
        """From now on only `play` reaches the call; what Twilio still holds of a reply is dropped."""
        self.muted = True
        await self._clear()

    async def play(self, turn_id: int, pcm: bytes) -> None:
        """Audio of a turn, muted or not (the session's replies, or a voicemail message)."""
        if self._turn is not None and self._turn != turn_id:  # a new turn without the old one's end
            await self._send_frames(self._turn, self._encoder.flush())
        self._turn = turn_id
        await self._send_frames(turn_id, self._encoder.push(pcm))

    async def finish(self, turn_id: int) -> None:
        """The turn's last partial frame, padded (as a `tts_stream_end` does)."""
        if turn_id == self._turn:
            await self._send_frames(turn_id, self._encoder.flush())
            self._turn = None

    async def played(self, turn_id: int, timeout: float) -> bool:
        """Wait until Twilio has echoed every mark of the turn (its audio has played)."""
        prefix = f"{turn_id}:"
        try:
            async with asyncio.timeout(timeout):
                while any(n.startswith(prefix) and live for n, live in self._marks.items()):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason=reason)

    def playback_ack(self, name: str) -> PlaybackIn | None:
        """The ack for a mark Twilio echoed, or None: not ours, or dropped by a `clear` (Twilio
        echoes those at once, but that audio never played)."""
        playable = self._marks.pop(name, None)
        parsed = parse_mark(name)
        if not playable or parsed is None:
            return None
        return PlaybackIn(type="playback", turn_id=parsed[0], played_ms=parsed[1])

    async def _send_frames(self, turn_id: int, frames: list[bytes]) -> None:
        if not frames:
            return
        for frame in frames:
            payload = base64.b64encode(frame).decode()
            await self.ws.send_text(MediaOut(streamSid=self.stream_sid, media=MediaPayload(payload=payload)).model_dump_json())
        ms = self._sent_ms.pop(turn_id, 0) + sum(len(f) for f in frames) * 1000 // PHONE_RATE
        self._sent_ms[turn_id] = ms
        if len(self._sent_ms) > 8:  # only the newest turns can still be playing
            self._sent_ms.popitem(last=False)
        name = mark_name(turn_id, ms)
        self._marks[name] = True
        if len(self._marks) > MAX_MARKS:
            self._marks.popitem(last=False)
        await self.ws.send_text(MarkOut(streamSid=self.stream_sid, mark=MarkName(name=name)).model_dump_json())

    async def _clear(self) -> None:
        self._encoder.reset()
        self._turn = None
        for name in self._marks:  # their audio is dropped: the echoes that follow are no acks
            self._marks[name] = False
        self.clears += 1
        await self.ws.send_text(ClearOut(streamSid=self.stream_sid).model_dump_json())

# --------------------------------------------------------------------------- serving one call


class MediaSession(Protocol):
    """What `serve_media_stream` drives: the app's session (services/server/session)."""

    async def on_audio(self, data: bytes) -> None: ...  # 16 kHz int16 LE mono

    async def on_text(self, msg: object) -> None: ...

    async def close(self) -> None: ...


OpenSession = Callable[[TwilioChannel, Start], Awaitable[MediaSession]]


class CallRefused(Exception):
    """Raised by `open_session` to refuse a call (full, draining): closed with this code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class ProtocolError(Exception):
    """The peer does not follow Media Streams: the socket is closed with 1008 and this reason."""


async def _receive(ws: MediaSocket) -> str | None:
    """The next text frame; None for a binary frame (Twilio sends none)."""
    try:
        text = await ws.receive_text()
    except KeyError:  # Starlette: a binary frame has no "text"
        return None
    return text if isinstance(text, str) else None


async def _handshake(ws: MediaSocket, timeout: float) -> Start:
    """`connected` (optional: some replayers skip it), then `start`."""
    async with asyncio.timeout(timeout):
        while True:
            text = await _receive(ws)
            if text is None:
                continue
            if len(text) > MAX_MESSAGE_CHARS:
                raise ProtocolError("message too long before start")
            try:
                msg = parse_message(text)
            except UnknownEvent:
                continue
            except ValidationError as exc:
                raise ProtocolError(f"invalid message before start: {first_error(exc)}") from exc
            except ValueError as exc:
                raise ProtocolError("message before start is not JSON") from exc
            if isinstance(msg, Connected):
                continue
            if isinstance(msg, Start):
                return msg
            raise ProtocolError(f"expected start, got {msg.event}")


def _check_format(start: Start) -> Law:
    fmt = start.start.mediaFormat
    law = ENCODINGS.get(fmt.encoding)
    if law is None or fmt.sampleRate != PHONE_RATE or fmt.channels != 1:
        raise ProtocolError(f"unsupported media format {fmt.encoding} {fmt.sampleRate} Hz x{fmt.channels}")
    return law


def _payload(media: Media) -> bytes | None:
    """The audio of a caller frame, or None (logged) for one we skip."""
    if media.media.track not in ("inbound", "inbound_track"):
        return None  # with tracks="both_tracks" Twilio also sends what it plays: our own reply
    raw = media.media.payload
    if len(raw) > MAX_PAYLOAD_CHARS:
        log.warning("media payload of %d chars skipped (limit %d)", len(raw), MAX_PAYLOAD_CHARS)
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        log.warning("media payload is not base64: skipped")
        return None


async def serve_media_stream(ws: MediaSocket, open_session: OpenSession, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Serve one call on an accepted WebSocket until `stop` or a disconnect.

    `open_session(channel, start)` makes the session (start.start.customParameters carries the
    <Parameter>s of the TwiML); it may raise to refuse the call, which closes the socket."""
    try:
        start = await _handshake(ws, handshake_timeout)
        law = _check_format(start)
    except (ProtocolError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, ProtocolError) else f"no start message within {handshake_timeout:.0f} s"
        log.warning("media stream refused: %s", reason)
        with contextlib.suppress(*DISCONNECTED):
            await ws.close(CLOSE_POLICY, reason=reason[:120])  # a close reason is at most 123 bytes
        return
    except DISCONNECTED:
        return
    info = start.start
    log.info("media stream %s of call %s started (%s)", start.streamSid, info.callSid, info.mediaFormat.encoding)
    channel = TwilioChannel(ws, start.streamSid)
    try:
        session = await open_session(channel, start)
    except CallRefused as exc:
        log.warning("call %s refused: %s", info.callSid, exc.reason)
        with contextlib.suppress(*DISCONNECTED):
            await ws.close(exc.code, reason=exc.reason[:120])
        return
    except Exception:
        log.exception("could not open a session for call %s", info.callSid)
        with contextlib.suppress(*DISCONNECTED):
            await ws.close(CLOSE_ERROR, reason="could not open a session")
        return
    try:
        await _pump(ws, channel, session, Inbound(law))
    finally:
        await session.close()
        log.info("media stream %s ended", start.streamSid)


async def _pump(ws: MediaSocket, channel: TwilioChannel, session: MediaSession, decoder: Inbound) -> None:
    """Twilio's messages into the session until `stop` or a disconnect."""
    skipped, last_warning = 0, 0.0
    while True:
        try:
            text = await _receive(ws)
        except DISCONNECTED:
            return
        if text is None:
            continue
        try:
            if len(text) > MAX_MESSAGE_CHARS:
                raise ValueError(f"message of {len(text)} chars")
            msg = parse_message(text)
        except UnknownEvent:
            continue
        except ValueError as exc:  # ValidationError is one: a bad frame is skipped, not fatal
            skipped += 1
            if time.monotonic() - last_warning > 5.0:  # a broken peer must not flood the log
                last_warning = time.monotonic()
                why = first_error(exc) if isinstance(exc, ValidationError) else str(exc)
                log.warning("skipped %d invalid media stream message(s), the last: %s", skipped, why[:120])
            continue
        if isinstance(msg, Media):
            audio = _payload(msg)
            if audio:
                await session.on_audio(decoder.push(audio))
        elif isinstance(msg, Mark):
            ack = channel.playback_ack(msg.mark.name)
            if ack is not None:
                await session.on_text(ack)
        elif isinstance(msg, Stop):
            with contextlib.suppress(*DISCONNECTED):
                await ws.close(CLOSE_NORMAL, reason="stream stopped")
            return
        elif isinstance(msg, Dtmf):
            log.info("dtmf %s (not used yet)", msg.dtmf.digit[:4])


__all__ = [
    "FRAME_BYTES", "CallRefused", "ClearOut", "Connected", "Dtmf", "Mark", "MarkOut", "Media", "MediaOut", "MediaSession", "MediaSocket",
    "OpenSession", "Start", "Stop", "TwilioChannel", "UnknownEvent", "parse_mark", "parse_message", "serve_media_stream",
]
