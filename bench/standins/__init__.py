"""Stand-in engines: the STT, chat and TTS services' wire protocols, answered instantly.

They are fakes for measuring the session server's own overhead (bench/load.py
--standins), not models: every answer is fixed or derived from the request's size,
and none waits on anything but the network.

    python -m bench.standins --stt-port 23001 --chat-port 23002 --tts-port 23003

- STT  `POST /transcribe` (multipart `audio_file` or `file`; raw int16 PCM as `audio/l16`
  or a `.pcm`/`.raw` name, else any file soundfile reads) → `{text, language, duration,
  processing_time, segments}`; the text has ~2.5 words per second of audio and ends with ".".
- chat `POST /v1/chat/completions`: with `stream: true`, server-sent events exactly as
  services/chat/app.py sends them (role chunk, `{"object":"end_of_turn","probability":0.9}`
  when `end_of_turn` is true, one chunk per word, a stop chunk, `data: [DONE]`), no delay;
  without, one `chat.completion`.
- TTS  `WS /tts/stream`: per `speak`, 0.5 s of a 220 Hz tone as binary float32 LE 24 kHz
  frames of 80 ms, then `{"type":"end","id","samples","sample_rate"}`; `{"type":"cancel"}`
  → `{"type":"cancelled"}`. Frames are paced at `STANDIN_TTS_RTF` (default 0.05, Piper's
  real-time factor here: the first frame at once, the rest 4 ms apart; 0 = all at once).

All three are built with shared.service.create_service, so /health, /ready, /metrics,
API keys and rate limits behave as in the real services (set RATE_LIMIT_PER_MINUTE=0
for load runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    """Several servers share one process and loop: signals are handled once, by `serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(stt_port: int, chat_port: int, tts_port: int, host: str = "127.0.0.1") -> None:
    """Serve the three stand-ins until SIGTERM or SIGINT."""
    from bench.standins import chat, stt, tts

    apps: list[tuple[FastAPI, int]] = [(stt.create_app(), stt_port), (chat.create_app(), chat_port), (tts.create_app(), tts_port)]
    servers = [_Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)) for app, port in apps]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await asyncio.gather(*(s.serve() for s in servers))
