from __future__ import annotations

import socket

from pydantic import Field, model_validator

from llm_dispatcher.settings import CommonSettings


class ConsumerSettings(CommonSettings):
    model: str = Field(..., description="Served model name this replica answers for (the queue it pulls)")
    vllm_url: str = Field("http://127.0.0.1:8000", description="Base URL of the vLLM replica (scrape + health)")
    advertise_url: str = Field("", description="URL the sender proxies to (default: vllm_url)")
    replica_id: str = Field("", description="Stable replica name (default: host name + port)")
    host: str = Field("0.0.0.0", description="Address of the consumer's own /metrics and probes")
    port: int = Field(9090, description="Port of the consumer's own /metrics and probes")
    max_concurrency: int = Field(16, ge=1, description="Granted, unreleased requests at most")
    max_waiting: float = Field(0, ge=0, description="Pull only while vLLM's waiting queue is at most this")
    max_kv_cache_usage: float = Field(0.95, gt=0, le=1, description="Pull only while KV-cache use is below")
    min_tokens_per_second_per_user: float = Field(
        0, ge=0, description="Pull only while tokens/s per running request stays at or above (0: off)"
    )
    reserved_slots: int = Field(
        0,
        ge=0,
        description="The last N slots below max_concurrency take only tickets of reserved_min_priority or more "
        "(N >= max_concurrency: a replica for high priority only)",
    )
    reserved_min_priority: int = Field(7, ge=0, description="Lowest ticket priority that may use the reserved slots")
    reserved_hold_s: float = Field(
        0,
        ge=0,
        description="Keep the reserved slots for this long after the last high-priority grant, then lend them to "
        "lower priorities until the next one (0: always keep them)",
    )
    preempt_batch: bool = Field(
        True,
        description="While every slot is held, end the batch line of a lower priority granted last when a "
        "sender says a higher-priority request waits (the line runs again later)",
    )
    prefetch: int = Field(8, ge=1, description="Tickets the broker may push before an ack, at most the free room")
    scrape_interval_s: float = Field(0.5, gt=0, description="How often vLLM /metrics and /health are read")
    metrics_stale_after_s: float = Field(5.0, gt=0, description="Older metrics are ignored (in-flight cap only)")
    unhealthy_after_s: float = Field(2.0, gt=0, description="Stop pulling when /health failed this long")
    lease_ttl_s: float = Field(
        30.0,
        gt=0,
        description="A lease neither released nor renewed (senders renew every ttl/3) is reclaimed: how long a "
        "sender that died holds its slots",
    )
    lease_reconcile_s: float = Field(
        10.0,
        gt=0,
        description="After a broker reconnect, a lease no sender renews within this time is reclaimed "
        "(its release may have been lost)",
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, description="How often the replica announces itself")
    forward_priority: bool = Field(False, description="Send the ticket priority to vLLM (--scheduling-policy priority)")
    shutdown_grace_s: float = Field(30.0, ge=0, description="How long granted requests may finish at shutdown")

    @model_validator(mode="after")
    def _defaults(self) -> ConsumerSettings:
        if not self.advertise_url:
            object.__setattr__(self, "advertise_url", self.vllm_url)
        if not self.replica_id:
            object.__setattr__(self, "replica_id", f"{socket.gethostname()}-{self.model}-{self.port}")
        return self
