"""Twilio Media Streams' messages (websocket-messages in Twilio's docs), as pydantic models:
what Twilio sends (`connected`, `start`, `media`, `mark`, `stop`, `dtmf`), what we send
(`media`, `mark`, `clear`), and our mark names ("turn:ms", the playback acks)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

# --------------------------------------------------------------------------- messages from Twilio


class Connected(BaseModel):
    event: Literal["connected"]
    protocol: str = "Call"
    version: str = "1.0.0"


class MediaFormat(BaseModel):
    encoding: str  # "audio/x-mulaw"
    sampleRate: int  # 8000
    channels: int = 1


class StartInfo(BaseModel):
    accountSid: str
    streamSid: str
    callSid: str
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    customParameters: dict[str, str] = Field(default_factory=dict)  # <Parameter>s of the <Stream>
    mediaFormat: MediaFormat


class _Event(BaseModel):
    """What every message of a started stream carries besides its event."""

    sequenceNumber: str = ""
    streamSid: str = ""


class Start(_Event):
    event: Literal["start"]
    streamSid: str
    start: StartInfo


class MediaInfo(BaseModel):
    track: str = "inbound"  # "inbound" (the caller) or "outbound" (what the call plays)
    chunk: str = ""
    timestamp: str = ""  # ms since the stream started
    payload: str  # base64 of the raw audio, no header


class Media(_Event):
    event: Literal["media"]
    media: MediaInfo


class MarkName(BaseModel):
    name: str


class Mark(_Event):
    event: Literal["mark"]
    mark: MarkName


class StopInfo(BaseModel):
    accountSid: str = ""
    callSid: str = ""


class Stop(_Event):
    event: Literal["stop"]
    stop: StopInfo = Field(default_factory=StopInfo)


class DtmfInfo(BaseModel):
    track: str = "inbound_track"
    digit: str


class Dtmf(_Event):
    event: Literal["dtmf"]
    dtmf: DtmfInfo


TwilioMessage = Annotated[Connected | Start | Media | Mark | Stop | Dtmf, Field(discriminator="event")]
twilio_message = TypeAdapter(TwilioMessage)
KNOWN_EVENTS = frozenset({"connected", "start", "media", "mark", "stop", "dtmf"})

# --------------------------------------------------------------------------- messages to Twilio


class MediaPayload(BaseModel):
    payload: str


class _Reply(BaseModel):
    streamSid: str


class MediaOut(_Reply):
    event: Literal["media"] = "media"
    media: MediaPayload


class MarkOut(_Reply):
    event: Literal["mark"] = "mark"
    mark: MarkName


class ClearOut(_Reply):
    event: Literal["clear"] = "clear"


class UnknownEvent(ValueError):
    """A well-formed message of an event we do not handle (Twilio may add some): ignored."""


def parse_message(text: str) -> Connected | Start | Media | Mark | Stop | Dtmf:
    """One text frame from Twilio. Raises ValueError (bad JSON or fields) or UnknownEvent."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("event") not in KNOWN_EVENTS:
        raise UnknownEvent(str(data.get("event"))[:40])
    return twilio_message.validate_python(data)


def mark_name(turn_id: int, played_ms: int) -> str:
    return f"{turn_id}:{played_ms}"


def parse_mark(name: str) -> tuple[int, int] | None:
    """"turn:ms" back to (turn_id, played_ms); None for a name that is not one of ours."""
    turn, sep, ms = name.partition(":")
    if not sep or not turn.isdigit() or not ms.isdigit() or len(name) > 40:
        return None
    return int(turn), int(ms)
