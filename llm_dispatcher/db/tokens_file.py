"""The one loader of token files: what `tokens import` reads and what `LLMD_TOKENS_FILE` seeds.

A file holds a JSON or YAML list of token items, or a mapping with that list under `tokens`
(the shape a Helm value or a Secret usually has). Only the shape is checked here; each item's
fields are validated by `Store.import_tokens` (`tokens.token_columns`).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import yaml


def parse_tokens(text: str | bytes, source: str = "tokens") -> list[dict[str, Any]]:
    """The token items of a file's content; ValueError (naming `source`) when it is not that."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: neither JSON nor YAML: {exc}") from None
    if isinstance(data, dict) and "tokens" in data:
        data = data["tokens"]
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a list of tokens (or a mapping with a 'tokens' list)")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{source}: token {index} is a {type(item).__name__}, expected a mapping")
    return data


def load_tokens_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """`parse_tokens` of a file. OSError when it cannot be read (its message names the path)."""
    with open(path, "rb") as f:
        raw = f.read()
    return parse_tokens(raw, os.fspath(path))
