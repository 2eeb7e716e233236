"""The console script: a subcommand whose module is not installed (the simulator and dev tooling
in the production image) is not offered at all, rather than offered and crashing."""

from __future__ import annotations

import sys

import pytest

from llm_dispatcher import cli


def test_subcommands_of_modules_not_installed_are_absent_not_broken(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm_sim", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "vllm_sim.cli", None)
    monkeypatch.setitem(sys.modules, "devstack", None)
    monkeypatch.setitem(sys.modules, "devstack.dev", None)
    parser = cli.build_parser()
    help_text = parser.format_help()
    assert "sender" in help_text and "tokens" in help_text
    assert " sim " not in help_text and " dev " not in help_text
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sim"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_subcommand_is_offered_where_everything_is_installed():
    help_text = cli.build_parser().format_help()
    for name in cli.SUBCOMMANDS:
        assert name in help_text
