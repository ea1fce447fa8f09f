"""Telephony settings, from the environment (prefix SERVER_TWILIO_) and `.env`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import ROOT


class TwilioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVER_TWILIO_", env_file=ROOT / ".env", extra="ignore")
    auth_token: SecretStr = Field(SecretStr(""), description="the account's auth token: webhook and stream requests "
                                  "must carry a valid X-Twilio-Signature; empty: not checked")
    public_url: str = Field("", description="https://host Twilio reaches this server at, when behind a proxy (with a "
                            "/prefix if the proxy strips one); empty: the request's Host header")

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for local tests)")
        return v
