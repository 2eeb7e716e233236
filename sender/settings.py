from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from llm_dispatcher.settings import DEFAULT_DATABASE_URL, CommonSettings
from sender.routes import DEFAULT_FORWARD_PATHS, check_forward_path


class SenderSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the sender listens on")
    port: int = Field(8080, description="Port the sender listens on")
    metrics_host: str = Field("", description="Address of the /metrics listener (empty: the same as host)")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port of the /metrics listener, apart from the API port (0: none)"
    )
    forward_paths: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FORWARD_PATHS),
        description="The POST endpoints dispatched to vLLM (JSON list); any other path is a 404",
    )
    database_url: SecretStr = Field(
        SecretStr(DEFAULT_DATABASE_URL), description="SQLAlchemy async URL of the token/usage DB"
    )
    tokens_file: str = Field(
        "",
        description="JSON/YAML list of tokens {name, token, priority, threshold} (or a mapping with that list "
        "under `tokens`) upserted at start",
    )
    auto_migrate: bool = Field(True, description="Apply database migrations at start")
    models: list[str] = Field(default_factory=list, description="Models known even before a replica announces itself")
    queue_timeout_s: float = Field(60.0, gt=0, description="How long a ticket may wait for a replica")
    queue_depth_max_age_s: float = Field(
        0.05, ge=0, description="A queue depth read this recently is reused for the threshold check"
    )
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After sent with 429 and 503")
    release_batch_s: float = Field(
        0.005,
        ge=0,
        description="Lease releases to one consumer within this window go in one message (0: one message each)",
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive within this time from the headers (408 after)"
    )
    max_header_bytes: int = Field(
        65536, ge=1024, description="Largest request line + headers accepted (431 above, the connection closed)"
    )
    token_cache_ttl_s: float = Field(10.0, ge=0, description="How long a token lookup is cached (revocation delay)")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="A replica is live while its last heartbeat is younger")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout to vLLM")
    upstream_read_timeout_s: float = Field(
        600.0, gt=0, description="Read timeout between bytes from vLLM (a stream: checked every quarter of it)"
    )
    upstream_max_connections: int = Field(1000, gt=0, description="Pooled connections to all replicas")
    usage_flush_interval_s: float = Field(1.0, gt=0, description="Usage records are written in batches this often")
    access_log: bool = Field(True, description="One structured log line per proxied request")
    batch_runner: bool = Field(True, description="Run batch lines in this sender (any number of senders may)")
    batch_max_file_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest file accepted by POST /v1/files (413 above)"
    )
    batch_max_lines: int = Field(50_000, gt=0, description="Most requests in one batch input file")
    batch_max_waiting: int = Field(
        2, ge=1, description="A batch's lines waiting for a grant at once, per runner (the rest wait in the database)"
    )
    batch_claim_s: float = Field(
        60.0, gt=0, description="A batch line's claim; renewed while it runs, taken over when its runner died"
    )
    batch_poll_interval_s: float = Field(0.5, gt=0, description="How often the runner looks for batch work")
    preempt_after_s: float = Field(
        0.05,
        ge=0,
        description="A request waiting this long for a replica asks one where batch lines hold slots to end one "
        "for it, and asks again as often while it waits (0: never)",
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long in-flight streams may finish at shutdown")
    fair_quantum_tokens: float = Field(
        2000.0,
        gt=0,
        description="Fair share within a band: a key holding (waiting + in flight) under this many estimated "
        "tokens gets the band's top sub-level, one lower per doubling (see LLMD_FAIR_LEVELS)",
    )
    limits_redis_url: SecretStr | None = Field(
        None,
        description="Redis (redis://, rediss://) holding the per-key limits every sender shares; unset: each "
        "sender keeps them in its memory (exact with one sender process)",
    )
    limit_hold_ttl_s: float = Field(
        30.0,
        gt=0,
        description="A request's max-parallel hold in Redis lapses this long after its sender stopped renewing "
        "it (a sender that died leaks no slot for longer)",
    )
    forward_user_headers: bool = Field(
        False, description="Forward OpenWebUI's X-OpenWebUI-User-* headers to vLLM (read for usage and limits anyway)"
    )
    admin_token: SecretStr | None = Field(
        None,
        description="An admin token (its plaintext) upserted at start as LLMD_ADMIN_TOKEN_NAME, admin role, no "
        "inference rights: the first key of the admin API and the console (the chart takes it from a Secret)",
    )
    admin_token_name: str = Field("admin", description="The name LLMD_ADMIN_TOKEN gets in the token store")
    console_secret: SecretStr | None = Field(
        None,
        description="Key that signs the web console's session cookies (unset: a random key per process, so "
        "sessions last until the sender restarts and work only on the sender that issued them; set it when "
        "several senders serve the console)",
    )
    console_session_s: float = Field(
        8 * 3600.0, gt=0, description="How long a console sign-in lasts before signing in again"
    )

    @field_validator("forward_paths")
    @classmethod
    def _forward_paths(cls, paths: list[str]) -> list[str]:
        return [check_forward_path(p) for p in paths]

    def secret_urls(self) -> dict[str, str]:
        urls = {**super().secret_urls(), "LLMD_DATABASE_URL": self.database_url.get_secret_value()}
        if self.limits_redis_url is not None:
            urls["LLMD_LIMITS_REDIS_URL"] = self.limits_redis_url.get_secret_value()
        return urls
