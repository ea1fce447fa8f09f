"""Declarative settings, one class per service, read from the environment and `.env`.

Every field is listed (with its default) in `.env.example`. Invalid values fail
at start-up with pydantic's message, never at the first request.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


def _cfg(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=ROOT / ".env", extra="ignore")


class CommonSettings(BaseSettings):
    model_config = _cfg("")
    log_level: str = "INFO"
    log_json: bool = False
    log_user_text: bool = Field(False, description="log transcripts and replies (off: privacy)")
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated API keys shared by all services; empty: open access, loopback only")
    token_secret: SecretStr = Field(SecretStr(""), description="HMAC secret of browser session tokens; empty: derived from the keys")
    token_ttl: float = Field(60.0, gt=0, le=3600, description="seconds a session token stays valid (it is single-use)")
    rate_limit_per_minute: int = Field(600, ge=0, description="requests and connections per key per minute (0: off)")
    drain_timeout: float = Field(10.0, ge=0, le=300, description="on SIGTERM, seconds to let work in flight finish")


class SttSettings(BaseSettings):
    model_config = _cfg("STT_")
    host: str = "127.0.0.1"
    port: int = 8001
    engine: Literal["faster_whisper"] = "faster_whisper"
    model: str = Field("", description="faster-whisper model name or path; empty = bundled tiny.en")
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(1, ge=1, le=10)
    cpu_threads: int = Field(2, ge=1)
    partial_duty: float = Field(0.5, gt=0, le=1, description="most of the worker's time that live partial passes may take "
                                "(the rest stays free for the chat and TTS on a shared machine; flushes are never held)")
    language: str = "en"
    max_upload_mb: float = 25.0
    no_speech_threshold: float = Field(0.6, description="drop segments more likely silence than speech")
    logprob_threshold: float = Field(-1.0, description="drop segments decoded with lower avg log-probability")


class ChatSettings(BaseSettings):
    model_config = _cfg("CHAT_")
    host: str = "127.0.0.1"
    port: int = 8002
    engine: Literal["llama_cpp", "openai", "vllm", "groq"] = "llama_cpp"
    model_path: str = Field("", description="GGUF path; empty = bundled Gemma 3 270M")
    n_threads: int = Field(2, ge=1)
    adaptive_threads: bool = Field(True, description="llama_cpp: each decode uses only the cores other processes leave free (at least 1)")
    n_ctx: int = Field(2048, ge=256)
    parallel: int = Field(4, ge=1, le=16, description="llama_cpp: sequences decoded together (slots); each gets n_ctx")
    nice: int = Field(5, ge=0, le=19, description="lower CPU priority of the chat process (0: unchanged)")
    max_tokens: int = Field(60, ge=1, le=1024)
    max_tokens_limit: int = Field(512, ge=1, le=4096, description="the most tokens one request may ask for (more is clamped)")
    temperature: float = Field(0.6, ge=0, le=2)
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_api_key: SecretStr = SecretStr("")
    openai_model: str = ""
    vllm_model: str = ""
    groq_model: str = "llama-3.1-8b-instant"
    history_turns: int = Field(8, ge=0, description="/chat: turns kept per session")
    max_sessions: int = Field(1000, ge=1)


class GroqSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ROOT / ".env", extra="ignore")
    groq_api_key: SecretStr = SecretStr("")


class TtsSettings(BaseSettings):
    model_config = _cfg("TTS_")
    host: str = "127.0.0.1"
    port: int = 8003
    engine: Literal["piper", "xtts", "cartesia", "elevenlabs"] = "piper"
    voice: str = Field("", description="default voice: a catalog id (GET /voices) or a Piper .onnx path; empty = the engine's own (Piper: joe)")
    voices_dir: str = Field("", description="extra Piper voices, read at start-up: a folder of <id>.onnx + <id>.onnx.json")
    agents_file: str = Field(str(ROOT / "agents.json"), description="agents whose `voice` a `personality` selects, read at start-up")
    data_dir: str = Field(str(ROOT / "data" / "voices"), description="cloned voices (metadata, speaker conditioning), files named by generated id")
    clone_max_bytes: int = Field(8_000_000, ge=10_000, description="largest reference recording accepted by POST /v1/voices")
    clone_max_voices: int = Field(100, ge=1, description="most cloned voices kept")
    chunk_ms: int = Field(80, ge=10, le=1000, description="max audio per streamed chunk")
    threads: int = Field(2, ge=1, description="ONNX Runtime threads for Piper")
    max_concurrent: int = Field(0, ge=0, le=64, description="local syntheses at once, all streams (0: the cores / threads, at least 1)")
    xtts_model_path: str = ""
    xtts_speaker_wav: str = ""
    cartesia_api_key: SecretStr = SecretStr("")
    cartesia_voice_id: str = ""
    cartesia_url: str = "wss://api.cartesia.ai/tts/websocket"
    elevenlabs_api_key: SecretStr = SecretStr("")
    elevenlabs_voice_id: str = ""
    elevenlabs_url: str = "wss://api.elevenlabs.io"


class ServerSettings(BaseSettings):
    model_config = _cfg("SERVER_")
    host: str = "127.0.0.1"
    port: int = 8000
    stt_url: str = "http://127.0.0.1:8001"
    chat_url: str = "http://127.0.0.1:8002"
    tts_url: str = "ws://127.0.0.1:8003/tts/stream"
    stt_urls: str = Field("", description="several STT replicas, comma-separated (overrides stt_url); least-loaded first")
    chat_urls: str = Field("", description="several chat replicas, comma-separated (overrides chat_url)")
    tts_urls: str = Field("", description="several TTS stream URLs, comma-separated (overrides tts_url)")
    agents_file: str = str(ROOT / "agents.json")
    request_timeout: float = 30.0
    # speech detector defaults (per-session overrides in the init message)
    energy_threshold: float = Field(12.0, description="dB above the adaptive noise floor that counts as speech")
    min_speech_duration: float = 0.08
    pause_duration: float = Field(0.15, description="silence that starts speculative processing")
    max_silence_duration: float = Field(0.9, description="silence that ends a turn whatever was said")
    max_recording_duration: float = 30.0
    detector: Literal["energy", "silero"] = "energy"
    # turn-taking
    confirm_silence: float = Field(0.45, description="silence after which a complete-looking transcript ends the turn")
    end_of_turn_threshold: float = Field(0.2, description="chat engine's P(sentence finished) needed to end a turn early")
    end_of_turn_clear: float = Field(0.4, ge=0, le=1, description="P(sentence finished) at which finished words end the turn whatever the sound says")
    end_of_turn_unlikely: float = Field(0.0, ge=0, le=1, description="P(sentence finished) under which the turn waits long unless words and sound are sure (0: off)")
    end_of_turn_policy: Literal["text", "audio", "both", "learned"] = Field(
        "both", description="cues that end a turn: the words (punctuation, language model), the sound (Smart Turn), both "
                            "(endpointing.judge), or all of them in the learned model (services/server/eot_model.py)")
    audio_end_threshold: float = Field(0.5, ge=0, le=1, description="Smart Turn P(finished) at which the speech sounds finished")
    audio_sure_threshold: float = Field(0.9, ge=0, le=1, description="... so clearly that finished words need no language-model agreement")
    sure_silence: float = Field(0.45, ge=0.05, description="silence that ends a turn whose words and sound both say finished")
    unfinished_max_silence: float = Field(2.5, ge=0.1, le=10, description="silence a turn may wait when words and sound both say unfinished")
    words_stopped: float = Field(1.5, ge=0.5, le=10, description="no new words for this long while sound goes on (a noisy room) counts as a pause")
    echo_threshold: float = Field(0.85, description="loudness-contour correlation with our own playback that marks input as echo (>1: off)")
    barge_pause: float = Field(0.25, ge=0.05, le=2, description="speech over our reply this long, not our echo, pauses the reply")
    backchannel_max: float = Field(0.6, ge=0.1, le=3, description="speech over our reply this long is checked for words: the user's "
                                   "cut the reply, anything else (mhm, a cough, noise) lets it go on")
    first_chunk_max_words: int = Field(5, ge=1, description="speak the first words after this many if no clause boundary came")
    streaming_stt: bool = Field(True, description="stream the user's audio to STT while they speak (false: one request per pause)")
    history_turns: int = 10
    history_tokens: int = 600
    # limits
    allowed_origins: str = Field("", description="extra Origins allowed on /ws, comma-separated ('*': any); "
                                 "the server's own origin and localhost always are")
    max_sessions: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 2), ge=1,
                              description="concurrent sessions this server admits (default: 2 per core)")
    max_sessions_per_key: int = Field(0, ge=0, description="concurrent sessions per API key (0: max_sessions)")
    max_queued: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 2), ge=0,
                            description="sessions that may wait for a place when the server is full (0: refuse at once)")
    queue_timeout: float = Field(30.0, gt=0, description="seconds a queued session waits before it is refused")
    max_frame_bytes: int = Field(65536, ge=1024, description="largest WebSocket frame (64 KiB = 2 s of audio); larger: close 1009")
    max_init_bytes: int = Field(16384, ge=256, description="largest init or control message")
    session_max_duration: float = Field(3600.0, gt=0, description="seconds a session may last")
    session_idle_timeout: float = Field(60.0, gt=0, description="seconds without any client frame before a session ends")
    tool_timeout: float = Field(10.0, gt=0, description="seconds a client-side tool may take to send its tool_result")
    tool_modules: str = Field("", description="Python modules (comma-separated) that register server-side tools on import")
    resume_window: float = Field(30.0, ge=0, description="seconds a session whose socket dropped waits for its client "
                                 "to reconnect with the resume token (0: a drop ends the session)")
    max_body_mb: float = Field(26.0, gt=0, description="largest HTTP request body (uploads to the gateway)")
    # gateway: OpenAI voice names -> TTS catalog voice ids (JSON object in the environment)
    openai_voice_map: dict[str, str] = Field(
        default_factory=lambda: dict.fromkeys(
            ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"), "default"),
        description="OpenAI voice name -> TTS voice id used by the gateway's OpenAI-compatible routes")


def urls(many: str, one: str) -> list[str]:
    """A stage's replica URLs: the comma-separated list if given, else the single URL."""
    return [u.strip() for u in many.split(",") if u.strip()] or [one]


@lru_cache
def common() -> CommonSettings:
    return CommonSettings()
