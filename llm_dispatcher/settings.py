"""Typed configuration shared by both services. Read in main()/lifespan, never at import time."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_dispatcher.protocol import DEFAULT_PREFIX, MAX_PRIORITY

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/llm-dispatcher.db"


class CommonSettings(BaseSettings):
    """Environment variables are the field names upper-cased with the prefix `LLMD_`."""

    model_config = SettingsConfigDict(env_prefix="LLMD_", extra="ignore", frozen=True)

    amqp_url: str = Field(DEFAULT_AMQP_URL, description="RabbitMQ URL (amqp:// or amqps://)")
    queue_prefix: str = Field(DEFAULT_PREFIX, description="Prefix of every queue and exchange name")
    max_priority: int = Field(MAX_PRIORITY, ge=1, le=255, description="x-max-priority of model queues")
    log_level: str = Field("INFO", description="Log level")
    log_format: str = Field("json", description="json or text")

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        if v not in ("json", "text"):
            raise ValueError("log_format must be json or text")
        return v
