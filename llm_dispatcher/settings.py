"""Typed configuration shared by both services. Read in main()/lifespan, never at import time."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_dispatcher.protocol import DEFAULT_PREFIX, MAX_PRIORITY

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./data/llm-dispatcher.db"


# Passwords nobody should run with outside a laptop: the broker's stock account and the examples' ones.
PLACEHOLDER_PASSWORDS = ("guest", "password", "secret", "changeme", "change-me", "dev-password", "example")


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def placeholder_credential(url: str) -> str | None:
    """Why `url` carries a credential unfit for production (stock or placeholder password), or None."""
    parts = urlsplit(url)
    password = (parts.password or "").lower()
    if not password:
        return None
    if parts.username == "guest" and password == "guest":
        return "the broker's stock guest:guest account"
    if any(p in password for p in PLACEHOLDER_PASSWORDS):
        return "a placeholder password"
    return None


class CommonSettings(BaseSettings):
    """Environment variables are the field names upper-cased with the prefix `LLMD_`.

    Development is either said (`LLMD_ENVIRONMENT=development`) or seen: every URL that carries a
    credential points at a loopback host (RabbitMQ accepts guest:guest only from loopback anyway).
    Outside development a stock or placeholder credential refuses to start."""

    model_config = SettingsConfigDict(env_prefix="LLMD_", extra="ignore", frozen=True)

    environment: Literal["production", "development"] | None = Field(
        None, description="production or development (empty: development when every credentialed URL is loopback)"
    )
    amqp_url: SecretStr = Field(
        SecretStr(DEFAULT_AMQP_URL),
        description="RabbitMQ URL (amqp:// or amqps://); the nodes of a cluster: their URLs separated by commas, "
        "node 0 first, in the same order for every sender and consumer",
    )
    queue_prefix: str = Field(DEFAULT_PREFIX, description="Prefix of every queue and exchange name")
    max_priority: int = Field(MAX_PRIORITY, ge=1, le=255, description="Highest priority band (bands 0..this)")
    fair_levels: int = Field(
        4,
        ge=1,
        le=128,
        description="Broker priorities per band for fair share between the keys of one band (1: first come, first "
        "served); a model queue's x-max-priority is (max_priority + 1) * fair_levels - 1, at most 255",
    )
    log_level: str = Field("INFO", description="Log level")
    log_format: str = Field("json", description="json or text")

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        if v not in ("json", "text"):
            raise ValueError("log_format must be json or text")
        return v

    @model_validator(mode="after")
    def _broker_priorities_fit(self):
        top = (self.max_priority + 1) * self.fair_levels - 1
        if top > 255:
            raise ValueError(
                f"(max_priority + 1) * fair_levels - 1 = {top}: RabbitMQ allows at most 255 priorities; "
                "lower LLMD_FAIR_LEVELS or LLMD_MAX_PRIORITY"
            )
        return self

    def secret_urls(self) -> dict[str, str]:
        """The settings holding URLs with credentials, by environment variable (for the check below)."""
        urls = self.amqp_url.get_secret_value().split(",")
        if len(urls) == 1:
            return {"LLMD_AMQP_URL": urls[0]}
        return {f"LLMD_AMQP_URL (node {i})": url.strip() for i, url in enumerate(urls)}

    def is_development(self) -> bool:
        if self.environment is not None:
            return self.environment == "development"
        return all(is_loopback(urlsplit(url).hostname) for url in self.secret_urls().values())

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_development(self):
        if self.is_development():
            return self
        for name, url in self.secret_urls().items():
            why = placeholder_credential(url)
            if why:
                raise ValueError(
                    f"{name} uses {why} outside development: set a real credential "
                    "(or LLMD_ENVIRONMENT=development for a throw-away stack)"
                )
        return self
