"""Agents (name, system prompt, voice, detector settings, voicemail policy) from a JSON file, chosen by agentId."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field

from services.server.telephony.screening import VoicemailPolicy
from shared.protocol import DetectorOverrides, Tool

log = logging.getLogger("server.agents")


class Agent(BaseModel):
    id: str
    name: str = "Assistant"
    systemPrompt: str = "A friendly voice assistant who answers in one or two short spoken sentences."
    voice: str | None = None
    speechDetector: DetectorOverrides | None = None
    voicemail: VoicemailPolicy | None = Field(None, description="phone calls: screen the first words for an answering "
                                              "machine, and hang up or leave a message (telephony/screening.py)")
    tools: list[Tool] = Field(default_factory=list, max_length=32, description="OpenAI function format: a name "
                              "registered on the server runs there (services/server/tools.py), any other on the client")


class AgentBook(BaseModel):
    default: str
    agents: list[Agent] = Field(min_length=1)

    @classmethod
    def load(cls, path: str) -> AgentBook:
        p = Path(path)
        if not p.exists():
            log.warning("agents file %s not found: using one built-in agent", p)
            return cls(default="assistant", agents=[Agent(id="assistant")])
        return cls.model_validate(json.loads(p.read_text()))

    def get(self, agent_id: str) -> Agent:
        for a in self.agents:
            if a.id == agent_id:
                return a
        return next((a for a in self.agents if a.id == self.default), self.agents[0])
