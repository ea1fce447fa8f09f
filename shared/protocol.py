"""Every message that crosses a WebSocket, as a typed pydantic model.

One source of truth for the session protocol (client <-> :8000) and the TTS
streaming protocol (session server <-> :8003). Serialize with `dump()`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

LANGUAGE = r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$"  # ISO 639 code, optional region: en, en-US, yue
VOICE_ID = r"^[A-Za-z0-9_.-]{1,64}$"  # a catalog id (GET :8003/voices), never a path


# A chat request's stop sequences, as the chat service accepts them (and so the gateway too)
StopSequence = Annotated[str, Field(min_length=1, max_length=64)]
StopSequences = Annotated[list[StopSequence], Field(max_length=4)] | StopSequence | None


def first_error(exc: ValidationError) -> str:
    """The first validation problem as `field: reason`, for a client-facing error message."""
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"]) or "message"
    return f"{where}: {err['msg']}"

# --------------------------------------------------------------------------- tools (OpenAI function format)

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionSpec(BaseModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str = Field("", max_length=1024)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}},
                                       description="a JSON schema of the arguments")


class Tool(BaseModel):
    """A tool an agent can call, as OpenAI's chat completions API describes one."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: dict[str, str]  # {"name": ...}


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str = Field(pattern=TOOL_NAME)
    arguments: str = Field("{}", max_length=16000)


class ToolCallEntry(BaseModel):
    """An assistant message's `tool_calls` entry, as OpenAI's chat API writes it."""

    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCall(BaseModel):
    """The model asks for a tool: `arguments` is JSON text, as the model wrote it."""

    id: str = Field(max_length=128)
    name: str = Field(pattern=TOOL_NAME)
    arguments: str = Field("{}", max_length=16000)

    def wire(self, index: int | None = None) -> dict[str, Any]:
        """As an OpenAI `tool_calls` entry; a streamed delta's carries its `index`."""
        entry = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return entry if index is None else {"index": index, **entry}

# --------------------------------------------------------------------------- session: client -> server


class DetectorOverrides(BaseModel):
    """Per-session speech detector knobs (any subset; seconds and dB)."""

    model_config = ConfigDict(extra="forbid")
    energy_threshold: float | None = Field(None, ge=0, le=60, description="dB above the noise floor that counts as speech")
    min_speech_duration: float | None = Field(None, ge=0.02, le=2.0)
    max_silence_duration: float | None = Field(None, ge=0.1, le=5.0)
    max_recording_duration: float | None = Field(None, ge=1.0, le=120.0)
    pause_duration: float | None = Field(None, ge=0.05, le=2.0)
    engine: Literal["energy", "silero"] | None = None


class ResumeIn(BaseModel):
    """Continue a session after a dropped connection: the token from its last `call_ready`, and
    how many frames the client received after that `call_ready` (text and binary, on every
    connection of the session): the server sends the rest, so nothing is repeated or lost."""

    token: str = Field(min_length=8, max_length=128)
    received: int = Field(ge=0)


class InitMessage(BaseModel):
    """The first text frame of a session (vocal.fun-compatible, extended)."""

    agentId: str = Field(min_length=1, max_length=128)
    userId: str = Field(min_length=1, max_length=128)
    agentName: str = Field("Assistant", max_length=128)
    systemPrompt: str | None = Field(None, max_length=4000)
    voice: str | None = Field(None, pattern=VOICE_ID)
    language: str = Field("en", pattern=LANGUAGE)
    allowInterruptions: bool = True
    speechDetector: DetectorOverrides | None = None
    audioOut: Literal["json", "binary"] = "json"
    resume: ResumeIn | None = Field(None, description="continue a session whose connection dropped (its call_ready's resume_token)")


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
    voice: str | None = Field(None, pattern=VOICE_ID)


class ToolResultIn(BaseModel):
    """The client ran a tool the server asked it for (`tool_call`): its result, or why it failed."""

    type: Literal["tool_result"]
    call_id: str = Field(max_length=128)
    content: str = Field("", max_length=8000, description="the result, as text or JSON text")
    error: str | None = Field(None, max_length=1000)


ClientMessage = Annotated[TranscriptIn | PlaybackIn | InterruptIn | ConfigIn | ToolResultIn, Field(discriminator="type")]
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
    resume_token: str | None = Field(None, description="reconnect with it (init `resume`) within resume_window_s after a drop")
    resume_window_s: float | None = None
    resumed: bool = False


class Queued(_Out):
    """The server is full: this session waits for a place (then `call_ready`); audio sent meanwhile is dropped."""

    type: Literal["queued"] = "queued"
    position: int = Field(ge=1, description="place in the queue, 1 = next")
    estimated_wait_s: float
    message: str = "the server is full; you are in the queue, audio is ignored until call_ready"


class SpeechStart(_Out):
    type: Literal["speech_start"] = "speech_start"


class SpeechEnd(_Out):
    type: Literal["speech_end"] = "speech_end"
    duration: float


class TranscriptOut(_Out):
    type: Literal["transcript"] = "transcript"
    turn_id: int
    text: str
    replaces: int | None = Field(None, description="the turn whose words this one repeats (the user had not finished): "
                                 "show this transcript instead of that one")


class TranscriptPartial(_Out):
    """Live captions while the user speaks: `stable` is a prefix of `text` that will not change."""

    type: Literal["transcript_partial"] = "transcript_partial"
    turn_id: int
    text: str
    stable: str


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


class ToolCallOut(_Out):
    """Run this tool on the client and answer with `tool_result` (same call_id)."""

    type: Literal["tool_call"] = "tool_call"
    turn_id: int
    call_id: str
    name: str
    arguments: dict[str, Any]
    timeout_s: float


class Interrupted(_Out):
    """Stop playing this turn now (drop what is buffered): the user may be talking over it.
    `resumed` may follow if it was not the user's words after all."""

    type: Literal["interrupted"] = "interrupted"
    turn_id: int
    played_ms: float


class Resumed(_Out):
    """The speech over the reply was not the user's words (a backchannel, a cough, noise, our
    echo): the turn goes on from `from_ms`; its audio from there follows (seq continues)."""

    type: Literal["resumed"] = "resumed"
    turn_id: int
    from_ms: float


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
    voice: str | None = None  # a catalog id (GET /voices); checked by the TTS service, never a path
    personality: str | None = Field(None, max_length=128)  # an agent id or name: speak with that agent's voice
    id: str | None = Field(None, max_length=128)


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


# --------------------------------------------------------------------------- TTS voices (:8003 GET /voices, /v1/voices)

VOICE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class VoiceInfo(_Out):
    """One entry of the TTS voice catalog. Clients choose voices by `id` only."""

    id: str = Field(pattern=VOICE_ID_PATTERN)
    name: str
    engine: str
    language: str
    sample_rate: int
    cloned: bool = False
    alias_of: str | None = None  # set on the "default" entry


# --------------------------------------------------------------------------- STT service stream (:8001 /transcribe/stream)
# Binary frames: little-endian int16 mono PCM at 16 kHz. Text frames: the messages below.

LANGUAGE_PATTERN = r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$"  # en, yue, en-US, zh-Hant


class SttConfig(BaseModel):
    """Settings for the current and later utterances of this connection."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["config"]
    language: str | None = Field(None, max_length=8, pattern=LANGUAGE_PATTERN)
    prompt: str | None = Field(None, max_length=1000, description="prior text that conditions the decoder")


class SttFlush(BaseModel):
    """End of utterance: answer `final`, then the connection starts a new utterance.
    With `keep`, answer the text so far and go on with the same utterance (a pause the
    speaker may continue after)."""

    type: Literal["flush"]
    keep: bool = False


class SttReset(BaseModel):
    """Drop the audio and text of the current utterance."""

    type: Literal["reset"]


SttClientMessage = Annotated[SttConfig | SttFlush | SttReset, Field(discriminator="type")]
stt_client_message = TypeAdapter(SttClientMessage)


class SttPartial(_Out):
    """`committed` never changes once sent (later ones and the final start with it); `tail` may."""

    type: Literal["partial"] = "partial"
    committed: str
    tail: str
    text: str  # committed + tail
    heard: float = 0.0  # seconds of the stream's audio this pass had (every pass reports, changed or not)


class SttFinal(_Out):
    type: Literal["final"] = "final"
    text: str
    sentence_end: float | None = None  # Whisper's P(the words end a sentence): an end-of-turn cue (None: unknown)
    duration: float  # seconds of audio in the utterance
    processing_time: float  # seconds from the flush to this message
    passes: int = 0  # partial passes run for this utterance (diagnostics)
    max_pass_rtf: float = 0.0  # slowest partial pass over the new audio it covered


class SttError(_Out):
    type: Literal["error"] = "error"
    message: str
