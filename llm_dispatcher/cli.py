"""`llm-dispatcher` console script: one subcommand per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> int | None.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sender": ("sender.main", "run the OpenAI-compatible gateway"),
    "consumer": ("consumer.main", "run the consumer of one vLLM replica"),
    "tokens": ("llm_dispatcher.tokens_cli", "create, list, update and revoke API tokens"),
    "usage": ("llm_dispatcher.usage_cli", "usage report: requests, tokens and latencies by token, model, hour..."),
    "db": ("llm_dispatcher.db_cli", "database migrations"),
    # Development tooling (the `sim` extra): skipped where it is not installed, as in the production image.
    "sim": ("vllm_sim.cli", "run the vLLM simulator"),
    "dev": ("devstack.dev", "start a complete local stack (sender, consumers, simulator)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-dispatcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # not built into this install (the simulator and dev tooling in production)
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
