"""The voice catalog: every voice a client may name, by id (issue 8: ids, never paths).

Entries come from the engines (operator configuration, read at start-up) and from
cloned voices (TTS_DATA_DIR/<generated id>.json). A client's id is only ever looked up
in this dict, so the answer for an id that is not listed is the same whatever exists
on disk; an engine only receives ids it listed itself.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from pathlib import Path

from pydantic import ValidationError

from services.tts.engines.base import TtsEngine
from shared.protocol import VOICE_ID_PATTERN, VoiceInfo
from shared.service import ServiceError

log = logging.getLogger("tts.voices")
CLONE_ID = re.compile(r"clone-[0-9a-f]{12}")


class ClonedVoice(VoiceInfo):
    cloned: bool = True
    created: float
    duration: float  # seconds of reference audio
    consent: bool = True


def unknown_voice(voice: str) -> ServiceError:
    """The one answer for any id not in the catalog (missing file, existing file, path, garbage alike)."""
    shown = voice if len(voice) <= 64 else voice[:64] + "..."
    return ServiceError(400, f"unknown voice id {shown!r}; GET /voices lists them")


def load_personalities(path: str) -> dict[str, str | None]:
    """Agent id and name (lower case) -> the agent's voice id, from agents.json."""
    try:
        agents = json.loads(Path(path).read_text(encoding="utf-8")).get("agents", [])
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("agents file %s not read (%s): personalities use the default voice", path, exc)
        return {}
    out: dict[str, str | None] = {}
    for a in agents if isinstance(agents, list) else []:
        if isinstance(a, dict):
            voice = a.get("voice") if isinstance(a.get("voice"), str) else None
            for key in (a.get("id"), a.get("name")):
                if isinstance(key, str):
                    out.setdefault(key.lower(), voice)
    return out


class VoiceCatalog:
    def __init__(self, engines: dict[str, TtsEngine], default_engine: str, data_dir: str, agents_file: str) -> None:
        self.engines, self.default_engine = engines, default_engine
        self.data_dir = Path(data_dir)
        self.entries: dict[str, VoiceInfo] = {}
        for name in [default_engine, *sorted(set(engines) - {default_engine})]:
            for v in engines[name].voices():
                if v.id in self.entries or v.id == "default":
                    log.warning("voice id %r of %s already taken: skipped", v.id, name)
                else:
                    self.entries[v.id] = v
        self._load_cloned()
        self.personalities = load_personalities(agents_file)

    def _load_cloned(self) -> None:
        for path in sorted(self.data_dir.glob("clone-*.json")) if self.data_dir.is_dir() else []:
            stem = path.name.removesuffix(".json")
            try:
                entry = ClonedVoice.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValidationError) as exc:
                log.warning("cloned voice %s not loaded: %s", path.name, exc)
                continue
            if CLONE_ID.fullmatch(stem) and entry.id == stem and entry.engine == self.default_engine:
                self.entries[entry.id] = entry

    def listing(self) -> list[VoiceInfo]:
        """Every voice, with "default" first (an alias of the default engine's default voice)."""
        out = list(self.entries.values())
        target = self.engines[self.default_engine].default_voice
        if target in self.entries:
            out.insert(0, self.entries[target].model_copy(update={"id": "default", "alias_of": target}))
        return out

    def get(self, voice_id: str) -> VoiceInfo:
        if voice_id == "default":
            listing = self.listing()
            if listing and listing[0].id == "default":
                return listing[0]
        if not re.fullmatch(VOICE_ID_PATTERN, voice_id) or voice_id not in self.entries:
            raise unknown_voice(voice_id)
        return self.entries[voice_id]

    def resolve(self, voice: str | None, personality: str | None = None, engine: str | None = None) -> tuple[str, str | None]:
        """(engine name, voice id for that engine) for a request. `engine` is the route's
        provider (None: the voice's own engine). An explicit voice wins over a personality;
        an unknown personality, or one whose agent has no usable voice, gets the default."""
        if voice is None and personality:
            agent_voice = self.personalities.get(personality.lower())
            if agent_voice in self.entries and engine in (None, self.entries[agent_voice].engine):
                voice = agent_voice
        if voice is None or voice == "default":
            name = engine or self.default_engine
            return name, self.engines[name].default_voice
        if not re.fullmatch(VOICE_ID_PATTERN, voice) or voice not in self.entries:
            raise unknown_voice(voice)
        owner = self.entries[voice].engine
        if engine is not None and owner != engine:
            raise ServiceError(400, f"voice {voice!r} is a {owner} voice; this route speaks {engine}")
        return owner, voice

    # ----------------------------------------------------------------- cloned voices

    def count_cloned(self) -> int:
        return sum(isinstance(v, ClonedVoice) for v in self.entries.values())

    @staticmethod
    def new_id() -> str:
        return f"clone-{secrets.token_hex(6)}"

    def add_cloned(self, voice_id: str, name: str, duration: float) -> ClonedVoice:
        engine = self.engines[self.default_engine]
        entry = ClonedVoice(id=voice_id, name=name, engine=engine.name, language="en", sample_rate=engine.sample_rate,
                            created=round(time.time(), 3), duration=round(duration, 3))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.data_dir / f"{voice_id}.json.tmp"
        tmp.write_text(entry.model_dump_json(), encoding="utf-8")
        tmp.replace(self.data_dir / f"{voice_id}.json")  # atomic: a crash leaves no half-written entry
        self.entries[voice_id] = entry
        return entry

    def remove_cloned(self, voice_id: str) -> None:
        entry = self.get(voice_id)
        if not isinstance(entry, ClonedVoice):
            raise ServiceError(403, f"voice {voice_id!r} is built in; only cloned voices can be deleted")
        self.engines[entry.engine].remove_voice(voice_id)
        (self.data_dir / f"{voice_id}.json").unlink(missing_ok=True)
        del self.entries[voice_id]
