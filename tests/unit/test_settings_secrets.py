"""Secrets in the settings: never printed, and a stock or placeholder credential refuses to start
outside development (development said with LLMD_ENVIRONMENT, or seen: every credentialed URL loopback)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from sender.settings import SenderSettings


def test_urls_with_credentials_are_secret_in_reprs_and_dumps():
    s = SenderSettings(amqp_url="amqp://app:s3cr3t-x@10.0.0.5:5672/", database_url="postgresql+asyncpg://u:pw9@db/x")
    assert "s3cr3t-x" not in repr(s) and "pw9" not in repr(s) and "s3cr3t-x" not in str(s.model_dump())
    assert s.amqp_url.get_secret_value() == "amqp://app:s3cr3t-x@10.0.0.5:5672/"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@rabbitmq.prod:5672/",
        "amqp://llmd:change-me@10.1.2.3/",
        "amqp://llmd:llmd-dev-password@rabbitmq:5672/",
    ],
)
def test_a_stock_or_placeholder_broker_credential_refuses_to_start_outside_development(url):
    for cls, extra in ((SenderSettings, {}), (ConsumerSettings, {"model": "m"})):
        with pytest.raises(ValidationError, match="LLMD_AMQP_URL uses"):
            cls(amqp_url=url, **extra)
        assert cls(amqp_url=url, environment="development", **extra).is_development()


def test_a_placeholder_database_password_refuses_to_start_outside_development():
    with pytest.raises(ValidationError, match="LLMD_DATABASE_URL uses a placeholder password"):
        SenderSettings(
            amqp_url="amqp://app:strong-one@mq:5672/",
            database_url="postgresql+asyncpg://llmd:changeme@db.internal/llmd",
        )


def test_loopback_services_are_development_and_real_credentials_start_anywhere():
    assert SenderSettings().is_development()  # the defaults: guest:guest on 127.0.0.1, SQLite
    assert SenderSettings(amqp_url="amqp://guest:guest@localhost:5672/").is_development()
    prod = SenderSettings(
        amqp_url="amqp://llmd:Zq8-7hT1@rabbitmq:5672/", database_url="postgresql+asyncpg://llmd:Vb4-kk2@postgres/llmd"
    )
    assert not prod.is_development()
    with pytest.raises(ValidationError):
        SenderSettings(environment="production")  # said production: guest:guest even on loopback is refused


def test_example_tokens_seeded_outside_development_refuse_to_start():
    from sender.app import refuse_placeholder_tokens

    prod = SenderSettings(amqp_url="amqp://llmd:Zq8-7hT1@rabbitmq:5672/")
    examples = [{"name": "chat", "token": "sk-example-interactive-change-me"}, {"name": "ok", "token": "sk-Rb9xQ2"}]
    with pytest.raises(SystemExit, match="placeholder tokens outside development: chat"):
        refuse_placeholder_tokens(examples, prod)
    refuse_placeholder_tokens(examples, SenderSettings())  # development: allowed
    refuse_placeholder_tokens(examples[1:], prod)


def test_every_node_of_a_broker_cluster_is_checked_for_a_placeholder_credential():
    good, bad = "amqp://app:strong-one@mq-0:5672/", "amqp://guest:guest@mq-1:5672/"
    with pytest.raises(ValidationError, match=r"LLMD_AMQP_URL \(node 1\) uses the broker's stock"):
        SenderSettings(amqp_url=f"{good},{bad}")
    assert not SenderSettings(amqp_url=f"{good},amqp://app:strong-one@mq-1:5672/").is_development()
    assert SenderSettings(
        amqp_url="amqp://guest:guest@127.0.0.1:5672/,amqp://guest:guest@127.0.0.1:5673/"
    ).is_development()
