"""Request and response models shared by the gateway's API families.

Unknown fields are ignored (clients send provider-specific extras); every field that
is read is typed and bounded, so a wrong one is a 400 in the family's error shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from services.server.gateway.encode import AudioFormat
from shared.protocol import StopSequences

MAX_TEXT = 4096  # OpenAI's limit for speech input


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Segment(BaseModel):
    """A timestamped transcript piece (OpenAI verbose_json; GemmaVoice segments)."""

    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[Segment]


# ---------------------------------------------------------------- OpenAI transcription

class TranscriptionForm(_In):
    """The form fields of /v1/audio/transcriptions (the file travels beside them)."""

    model: str = Field("whisper-1", max_length=100)
    language: str | None = Field(None, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z]{2,4})?$")
    prompt: str | None = Field(None, max_length=4000)
    temperature: float | None = Field(None, ge=0, le=1)
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = "json"
    stream: bool = False


# ---------------------------------------------------------------- OpenAI speech

class VoiceRef(_In):
    id: str = Field(min_length=1, max_length=100)


class SpeechRequest(_In):
    model: str = Field("tts-1", max_length=100)
    input: str = Field(min_length=1, max_length=MAX_TEXT)
    voice: Annotated[str, Field(max_length=100)] | VoiceRef  # the bound on the str alone: a VoiceRef has no length
    instructions: str | None = Field(None, max_length=MAX_TEXT, description="accepted, not used by the embedded voices")
    response_format: AudioFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


# ---------------------------------------------------------------- OpenAI chat with audio

class InputAudio(_In):
    data: str = Field(min_length=1)
    format: Literal["wav", "mp3", "flac", "opus", "ogg", "webm", "m4a", "aac", "pcm16"] = "wav"


class ContentPart(_In):
    type: Literal["text", "input_text", "input_audio", "audio"]
    text: str | None = Field(None, max_length=32000)
    input_audio: InputAudio | None = None


class AudioRef(_In):
    id: str = Field(max_length=100)


class ChatMessageIn(_In):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=32000)] | Annotated[list[ContentPart], Field(max_length=100)] | None = None
    audio: AudioRef | None = Field(None, description="an earlier assistant audio reply, by id")


class AudioOut(_In):
    voice: Annotated[str, Field(max_length=100)] | VoiceRef = "alloy"
    format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"] = "wav"

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class ChatRequest(_In):
    model: str | None = Field(None, max_length=100)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=200)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOut | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    stop: StopSequences = None

    @property
    def wants_audio(self) -> bool:
        return "audio" in (self.modalities or [])

    def options(self) -> dict[str, Any]:
        return {"max_tokens": self.max_completion_tokens or self.max_tokens, "temperature": self.temperature, "stop": self.stop,
                "model": self.model}


# ---------------------------------------------------------------- GemmaVoice

class GenerateRequest(_In):
    prompt: str = Field(min_length=1, max_length=16000)
    max_tokens: int = Field(512, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=0)
    stop: StopSequences = None
    seed: int | None = Field(None, ge=0)


class GenerateResponse(BaseModel):
    generated_text: str


class SttResponse(BaseModel):
    text: str
    language: str | None = None
    segments: list[Segment] = Field(default_factory=list)


class TtsRequest(_In):
    text: str = Field(min_length=1, max_length=MAX_TEXT, validation_alias=AliasChoices("text", "input"))
    format: AudioFormat = Field("wav", validation_alias=AliasChoices("format", "response_format"))
    reference_id: str | None = Field(None, max_length=100)
    sample_rate: int | None = Field(None, ge=8000, le=48000, description="accepted; audio is 24 kHz")
    stream: bool = False
    speed: float = Field(1.0, ge=0.25, le=4.0)


class TtsResponse(BaseModel):
    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None


class DialogueTimings(BaseModel):
    stt_ms: float | None = None
    llm_ms: float
    tts_ms: float
    total_ms: float


class DialogueResponse(BaseModel):
    transcript: SttResponse
    response_text: str
    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None
    timings: DialogueTimings


# ---------------------------------------------------------------- Pollinations

Modality = Literal["tts", "sts", "stt", "ttt"]


class PolVoice(_In):
    name: str | None = Field(None, max_length=100)
    data: str | None = Field(None, description="base64 reference audio to clone")
    format: str | None = Field(None, max_length=10)


class PolAudio(_In):
    data: str = Field(min_length=1)
    format: str | None = Field(None, max_length=10)


class PolContent(_In):
    type: Literal["text", "voice", "clone_audio_transcript", "speech_audio", "input_audio"]
    text: str | None = Field(None, max_length=MAX_TEXT)
    voice: PolVoice | None = None
    audio_text: str | None = Field(None, max_length=MAX_TEXT)
    audio: PolAudio | None = None
    input_audio: PolAudio | None = None


class PolMessage(_In):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT)] | Annotated[list[PolContent], Field(max_length=20)]


class PolRequest(_In):
    messages: list[PolMessage] = Field(min_length=1, max_length=50)
    modality: Modality | None = None
    response_format: Literal["wav", "json"] | None = None
    consent: bool = Field(False, description="the speaker of voice.data agreed to be cloned")
