"""Every message that crosses a WebSocket, as a typed pydantic model.

One source of truth for the session protocol (client <-> :8000) and the TTS
streaming protocol (session server <-> :8003). Serialize with `dump()`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

# --------------------------------------------------------------------------- session: client -> server


class DetectorOverrides(BaseModel):
    """Per-session speech detector knobs (any subset; seconds and dB)."""

    model_config = ConfigDict(extra="forbid")
    energy_threshold: float | None = Field(None, description="dB above the noise floor that counts as speech")
    min_speech_duration: float | None = Field(None, ge=0.02, le=2.0)
    max_silence_duration: float | None = Field(None, ge=0.1, le=5.0)
    max_recording_duration: float | None = Field(None, ge=1.0, le=120.0)
    pause_duration: float | None = Field(None, ge=0.05, le=2.0)
    engine: Literal["energy", "silero"] | None = None


class InitMessage(BaseModel):
    """The first text frame of a session (vocal.fun-compatible, extended)."""

    agentId: str = Field(min_length=1, max_length=128)
    userId: str = Field(min_length=1, max_length=128)
    agentName: str = Field("Assistant", max_length=128)
    systemPrompt: str | None = Field(None, max_length=4000)
    voice: str | None = Field(None, max_length=128)
    language: str = Field("en", max_length=16)
    allowInterruptions: bool = True
    speechDetector: DetectorOverrides | None = None
    audioOut: Literal["json", "binary"] = "json"


class TranscriptIn(BaseModel):
    type: Literal["transcript"]
    text: str = Field(min_length=1, max_length=4000)


class PlaybackIn(BaseModel):
    type: Literal["playback"]
    turn_id: int
    played_ms: float = Field(ge=0)


class InterruptIn(BaseModel):
    type: Literal["interrupt"]


class ConfigIn(BaseModel):
    type: Literal["config"]
    allowInterruptions: bool | None = None
    speechDetector: DetectorOverrides | None = None
    voice: str | None = None


ClientMessage = Annotated[TranscriptIn | PlaybackIn | InterruptIn | ConfigIn, Field(discriminator="type")]
client_message = TypeAdapter(ClientMessage)

# --------------------------------------------------------------------------- session: server -> client


class _Out(BaseModel):
    def dump(self) -> str:
        return self.model_dump_json(exclude_none=True)


class CallReady(_Out):
    type: Literal["call_ready"] = "call_ready"
    session_id: str
    sample_rate_in: int = 16000
    sample_rate_out: int = 24000


class SpeechStart(_Out):
    type: Literal["speech_start"] = "speech_start"


class SpeechEnd(_Out):
    type: Literal["speech_end"] = "speech_end"
    duration: float


class TranscriptOut(_Out):
    type: Literal["transcript"] = "transcript"
    turn_id: int
    text: str


class ResponseText(_Out):
    type: Literal["response_text"] = "response_text"
    turn_id: int
    text: str


class AudioChunk(BaseModel):
    type: Literal["audio_chunk"] = "audio_chunk"
    chunk: str  # base64 float32 LE
    format: Literal["pcm_f32le"] = "pcm_f32le"
    sample_rate: int = 24000
    turn_id: int
    seq: int


class TtsStream(_Out):
    type: Literal["tts_stream"] = "tts_stream"
    data: AudioChunk


class TtsStreamEnd(_Out):
    type: Literal["tts_stream_end"] = "tts_stream_end"
    turn_id: int


class Interrupted(_Out):
    type: Literal["interrupted"] = "interrupted"
    turn_id: int
    played_ms: float


class Metrics(_Out):
    """Per-turn stage timings in milliseconds, measured from the detector's end of speech."""

    type: Literal["metrics"] = "metrics"
    turn_id: int
    stages: dict[str, float]


class ErrorOut(_Out):
    type: Literal["error"] = "error"
    code: str
    message: str
    recoverable: bool = True


# --------------------------------------------------------------------------- TTS service stream (:8003)


class TtsRequest(BaseModel):
    """One text to speak. Audio comes back as binary float32 LE frames at 24 kHz."""

    type: Literal["speak"] = "speak"
    text: str = Field(min_length=1, max_length=2000)
    voice: str | None = None
    id: str | None = None


class TtsCancel(BaseModel):
    """Drop whatever is queued or playing on this connection."""

    type: Literal["cancel"]


TtsClientMessage = Annotated[TtsRequest | TtsCancel, Field(discriminator="type")]
tts_client_message = TypeAdapter(TtsClientMessage)


class TtsEnd(_Out):
    """Sent after the last audio frame of one request."""

    type: Literal["end"] = "end"
    id: str | None = None
    samples: int
    sample_rate: int = 24000


class TtsError(_Out):
    type: Literal["error"] = "error"
    id: str | None = None
    message: str
