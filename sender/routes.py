"""Which client paths reach vLLM: an explicit allow-list of inference endpoints, matched on the
normalised, decoded path. Anything else (vLLM's operator routes such as /sleep, /collective_rpc or
/v1/load_lora_adapter, and any path with `..` tricks) never leaves the gateway.

Pure: no I/O, tested without a network.
"""

from __future__ import annotations

# The POST endpoints vLLM serves for inference, each naming a `model` in a JSON body:
DEFAULT_FORWARD_PATHS: tuple[str, ...] = (
    "/v1/chat/completions",  # OpenAI chat (OpenWebUI, the SDKs, LangChain)
    "/v1/completions",  # OpenAI legacy completions
    "/v1/embeddings",  # OpenAI embeddings (pooling models)
    "/v1/responses",  # OpenAI Responses API: creating a response (reading a stored one back is per replica)
    "/v1/messages",  # Anthropic Messages API, served by vLLM
    "/v1/messages/count_tokens",  # Anthropic token counting
    "/v1/rerank",  # Jina/Cohere-style reranking (pooling models)
    "/v1/score",  # pair scoring (pooling models)
)


def normalise(path: str) -> str:
    """The path with empty and `.` segments dropped and `..` applied, as an HTTP client would send it."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


def check_forward_path(path: str) -> str:
    """A configured forward path as written, or ValueError if it is not a plain absolute path."""
    if not path.startswith("/") or normalise(path) != path or "%" in path or "?" in path:
        raise ValueError(f"forward path {path!r} must be an absolute path without '.', '..', '//', '%' or '?'")
    return path


class ForwardPaths:
    """`match(path)` gives the canonical allowed path to send upstream, or None. `path` is the
    ASGI scope's path (already percent-decoded once: `%2e%2e` arrives as `..` and is normalised
    away; a doubly encoded `%252e` stays a literal `%2e`, which matches nothing)."""

    def __init__(self, paths: list[str] | tuple[str, ...]):
        self._allowed = frozenset(check_forward_path(p) for p in paths)

    def __contains__(self, path: str) -> bool:
        return self.match(path) is not None

    def match(self, path: str) -> str | None:
        if path in self._allowed:
            return path
        normal = normalise(path)
        return normal if normal in self._allowed else None

    def __iter__(self):
        return iter(sorted(self._allowed))
