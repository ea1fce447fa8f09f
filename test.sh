#!/usr/bin/env bash
# Set up (first time) and run every test: unit, each service with its real model, end to end, browser.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy
.venv/bin/python -m pytest "$@"
