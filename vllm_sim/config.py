"""Settings of the vLLM simulator: one typed object, built by the CLI or by tests, never read at import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Fields that `POST /sim/config` may change while the simulator runs (faults, latencies, token budget).
RUNTIME_FIELDS = frozenset(
    {
        "max_num_batched_tokens",
        "itl_base",
        "itl_per_seq",
        "prefill_per_token",
        "failure_rate",
        "failure_status",
        "stall_before_first_token",
        "drop_mid_stream_rate",
        "default_output_tokens",
    }
)


@dataclass
class SimConfig:
    """Everything that shapes one simulated vLLM replica.

    Latencies are in seconds. One engine step yields one token for every scheduled sequence whose
    prompt is computed and lasts
    ``itl_base + itl_per_seq * <sequences scheduled> + prefill_per_token * <prompt tokens computed>``.
    ``max_num_batched_tokens`` > 0 is vLLM's per-step token budget (chunked prefill: decodes first,
    then prompt chunks); 0: none, a whole prompt is prefilled in the step that admits it.
    With all three latencies at 0 the simulator answers at once, bypassing the scheduler and its
    budget ("zero-delay mode").
    """

    model: str = "sim-model"
    served_model_names: list[str] = field(default_factory=list)  # default: [model]
    max_model_len: int = 4096
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 0  # 0: no per-step token budget; else >= max_num_seqs, as vLLM
    kv_cache_tokens: int = 262_144
    scheduling_policy: str = "fcfs"  # or "priority": (priority, arrival), lower first
    itl_base: float = 0.0
    itl_per_seq: float = 0.0
    prefill_per_token: float = 0.0
    default_output_tokens: int = 64  # without max_tokens: seeded length in [n // 2, n]
    embedding_dim: int = 32
    seed: int = 0
    # faults
    failure_rate: float = 0.0
    failure_status: int = 500
    stall_before_first_token: float = 0.0
    drop_mid_stream_rate: float = 0.0
    startup_delay: float = 0.0
    # HTTP behaviour
    enable_request_id_headers: bool = False
    api_key: str | None = None
    version: str = "0.32.0"

    def __post_init__(self) -> None:
        if not self.served_model_names:
            self.served_model_names = [self.model]
        self.validate()

    def validate(self) -> None:
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', not {self.scheduling_policy!r}")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_num_batched_tokens < 0:
            raise ValueError("max_num_batched_tokens must be >= 0 (0: no budget)")
        if 0 < self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be 0 or at least"
                f" max_num_seqs ({self.max_num_seqs})"
            )
        if self.kv_cache_tokens < 1 or self.max_model_len < 1:
            raise ValueError("kv_cache_tokens and max_model_len must be positive")
        for name in ("itl_base", "itl_per_seq", "prefill_per_token", "stall_before_first_token", "startup_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("failure_rate", "drop_mid_stream_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not 400 <= self.failure_status <= 599:
            raise ValueError("failure_status must be an HTTP error status (400..599)")
        if self.default_output_tokens < 1 or self.embedding_dim < 1:
            raise ValueError("default_output_tokens and embedding_dim must be positive")

    @property
    def zero_delay(self) -> bool:
        return self.itl_base == 0 and self.itl_per_seq == 0 and self.prefill_per_token == 0

    def update(self, changes: dict[str, Any]) -> None:
        """Apply runtime changes (from ``POST /sim/config``); refuses unknown or start-up-only fields."""
        unknown = set(changes) - RUNTIME_FIELDS
        if unknown:
            raise ValueError(f"cannot change at runtime: {', '.join(sorted(unknown))}")
        old = dataclasses.asdict(self)
        for key, value in changes.items():
            expected = type(old[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(f"{key} must be a {expected.__name__}")
            setattr(self, key, value)
        try:
            self.validate()
        except ValueError:
            for key in changes:
                setattr(self, key, old[key])
            raise

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_key"] = None if self.api_key is None else "***"
        return data
