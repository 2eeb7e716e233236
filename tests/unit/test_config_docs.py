"""The README's configuration table stays true to the settings classes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.settings import ConsumerSettings
from sender.settings import SenderSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `(LLMD_[A-Z0-9_]+)` \|", README, re.M))


@pytest.mark.parametrize("cls", [SenderSettings, ConsumerSettings])
def test_every_setting_is_in_the_readme_table(cls):
    wanted = {f"LLMD_{name.upper()}" for name in cls.model_fields}
    assert wanted <= DOCUMENTED, f"undocumented: {sorted(wanted - DOCUMENTED)}"


def test_the_readme_documents_no_setting_that_does_not_exist():
    real = {f"LLMD_{n.upper()}" for cls in (SenderSettings, ConsumerSettings) for n in cls.model_fields}
    assert DOCUMENTED <= real, f"stale: {sorted(DOCUMENTED - real)}"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLMD_MAX_CONCURRENCY", "7")
    monkeypatch.setenv("LLMD_MODEL", "m")
    monkeypatch.setenv("LLMD_MODELS", '["a", "b"]')
    assert ConsumerSettings().max_concurrency == 7
    assert SenderSettings().models == ["a", "b"]


def test_the_consumer_refuses_to_start_without_a_model(monkeypatch):
    monkeypatch.delenv("LLMD_MODEL", raising=False)
    with pytest.raises(ValidationError):
        ConsumerSettings()


def test_invalid_values_are_refused_at_start():
    with pytest.raises(ValidationError):
        SenderSettings(queue_timeout_s=0)
    with pytest.raises(ValidationError):
        ConsumerSettings(model="m", max_kv_cache_usage=1.5)
    with pytest.raises(ValidationError):
        SenderSettings(log_format="xml")
