"""Configuration fails fast and is documented completely."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.server.telephony import TwilioSettings
from shared import config
from shared.protocol import InitMessage, client_message

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [
    (config.CommonSettings, ""), (config.ServerSettings, "SERVER_"), (config.SttSettings, "STT_"),
    (config.ChatSettings, "CHAT_"), (config.GroqSettings, ""), (config.TtsSettings, "TTS_"),
    (TwilioSettings, "SERVER_TWILIO_"),
]


def test_every_setting_is_in_env_example():
    listed = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    expected = {prefix + name.upper() for cls, prefix in SETTINGS for name in cls.model_fields}
    assert expected == listed


def test_invalid_setting_fails_at_start(monkeypatch):
    monkeypatch.setenv("STT_BEAM_SIZE", "0")
    with pytest.raises(ValidationError):
        config.SttSettings()
    monkeypatch.setenv("CHAT_ENGINE", "nonsense")
    with pytest.raises(ValidationError):
        config.ChatSettings()


def test_no_default_secrets():
    for cls, _ in SETTINGS:
        for name, field in cls.model_fields.items():
            if name.endswith(("api_key", "api_keys", "secret", "auth_token")):  # not max_sessions_per_key
                assert field.default.get_secret_value() == ""


def test_protocol_models_validate():
    init = InitMessage.model_validate({"agentId": "a", "userId": "u", "agentName": "n"})
    assert init.allowInterruptions is True and init.audioOut == "json"
    with pytest.raises(ValidationError):
        InitMessage.model_validate({"agentId": "a"})
    assert client_message.validate_json('{"type":"playback","turn_id":3,"played_ms":120}').played_ms == 120
    with pytest.raises(ValidationError):
        client_message.validate_json('{"type":"playback","turn_id":3,"played_ms":-1}')
