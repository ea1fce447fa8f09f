"""python -m bench.standins --stt-port P --chat-port P --tts-port P (see bench/standins/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio

from bench.standins import serve


def main() -> None:
    ap = argparse.ArgumentParser(description="Instant stand-ins for the STT, chat and TTS services")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--stt-port", type=int, default=8001)
    ap.add_argument("--chat-port", type=int, default=8002)
    ap.add_argument("--tts-port", type=int, default=8003)
    args = ap.parse_args()
    asyncio.run(serve(args.stt_port, args.chat_port, args.tts_port, args.host))


if __name__ == "__main__":
    main()
