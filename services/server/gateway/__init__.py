"""The gateway's other doors on the session server: OpenAI-compatible audio, GemmaVoice
and Audio Pollinations, each a thin adapter over the STT, chat and TTS services."""

from __future__ import annotations

from fastapi import APIRouter

from services.server.gateway.gemmavoice import router as gemmavoice_router
from services.server.gateway.openai_api import router as openai_router
from services.server.gateway.pollinations import router as pollinations_router

routers: list[APIRouter] = [openai_router, gemmavoice_router, pollinations_router]
