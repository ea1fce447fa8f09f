#!/usr/bin/env bash
# Set up (first time) and run the whole system: session server :8000, STT :8001, chat :8002, TTS :8003.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python launcher.py "$@"
