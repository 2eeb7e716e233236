from __future__ import annotations

from pydantic import Field

from llm_dispatcher.settings import DEFAULT_DATABASE_URL, CommonSettings


class SenderSettings(CommonSettings):
    host: str = Field("127.0.0.1", description="Address the sender listens on")
    port: int = Field(8080, description="Port the sender listens on")
    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy async URL of the token/usage DB")
    tokens_file: str = Field(
        "", description="JSON/YAML list of tokens {name, token, priority, threshold} upserted at start"
    )
    auto_migrate: bool = Field(True, description="Apply database migrations at start")
    models: list[str] = Field(default_factory=list, description="Models known even before a replica announces itself")
    queue_timeout_s: float = Field(60.0, gt=0, description="How long a ticket may wait for a replica")
    queue_depth_max_age_s: float = Field(
        0.05, ge=0, description="A queue depth read this recently is reused for the threshold check"
    )
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After sent with 429 and 503")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)")
    token_cache_ttl_s: float = Field(10.0, ge=0, description="How long a token lookup is cached (revocation delay)")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="A replica is live while its last heartbeat is younger")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout to vLLM")
    upstream_read_timeout_s: float = Field(600.0, gt=0, description="Read timeout between bytes from vLLM")
    upstream_max_connections: int = Field(1000, gt=0, description="Pooled connections to all replicas")
    usage_flush_interval_s: float = Field(1.0, gt=0, description="Usage records are written in batches this often")
    access_log: bool = Field(True, description="One structured log line per proxied request")
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long in-flight streams may finish at shutdown")
