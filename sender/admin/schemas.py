"""The admin API's request and response shapes, for validation and for the OpenAPI schema.

Responses are rendered from plain dicts (orjson); these models describe them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


ERRORS: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "A field is invalid (`param` names it)"},
    401: {"model": ErrorBody, "description": "No token, or an unknown, revoked or expired one"},
    403: {"model": ErrorBody, "description": "A valid token without the admin role (or a console call failing CSRF)"},
}


# -- tokens ----------------------------------------------------------------------------------------
class Token(BaseModel):
    """A token as the API shows it: never its value or hash."""

    id: int
    name: str
    priority: int
    threshold: int
    batch_priority: int | None = Field(None, description="The priority of its batch lines (null: `priority`)")
    allowed_models: list[str] | None = Field(None, description="null: every model")
    expires_at: str | None = Field(None, description="ISO 8601, UTC (`Z`); null: never")
    enabled: bool
    admin: bool = Field(description="May call the admin API and sign in to the console")
    inference: bool = Field(description="May call the /v1 API")
    max_parallel: int | None = Field(None, description="Requests waiting or in flight at once (null: no limit)")
    rpm: int | None = Field(None, description="Requests per minute (null: no limit)")
    tpm: int | None = Field(None, description="Prompt + completion tokens per minute (null: no limit)")
    user_max_parallel: int | None = Field(None, description="Requests at once per end user (null: no limit)")
    status: Literal["active", "revoked", "expired"]
    created_at: str | None = None


class TokenList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Token]
    has_more: bool
    last_id: str | None = Field(None, description="The last token's name: pass it as `after` for the next page")


class TokenCreated(BaseModel):
    token: Token
    key: str = Field(description="The token's value, shown this once (only its hash is stored)")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="Letters, digits and ._@:+- (unique)")
    priority: StrictInt | None = Field(None, description="0-10; required unless the token has no inference rights")
    threshold: StrictInt | None = Field(
        None, description="Refuse (429) when the model's queue holds this many; required with inference rights"
    )
    allowed_models: list[StrictStr] | None = Field(None, description="null: every model")
    expires_at: StrictStr | None = Field(None, description="ISO 8601; null: never")
    batch_priority: StrictInt | None = None
    max_parallel: StrictInt | None = Field(None, description="Per-key limit; null: none")
    rpm: StrictInt | None = Field(None, description="Per-key limit; null: none")
    tpm: StrictInt | None = Field(None, description="Per-key limit; null: none")
    user_max_parallel: StrictInt | None = Field(None, description="Per end user of the key; null: none")
    admin: StrictBool = False
    inference: StrictBool | None = Field(
        None, description="Default: true for an ordinary token, false for an admin token"
    )


class TokenUpdate(BaseModel):
    """Only the fields given change; `allowed_models: null` allows every model, `expires_at: null`
    removes the expiry, `batch_priority: null` follows `priority`, a limit set to null is removed."""

    model_config = ConfigDict(extra="forbid")

    priority: StrictInt | None = None
    threshold: StrictInt | None = None
    allowed_models: list[StrictStr] | None = None
    expires_at: StrictStr | None = None
    batch_priority: StrictInt | None = None
    max_parallel: StrictInt | None = None
    rpm: StrictInt | None = None
    tpm: StrictInt | None = None
    user_max_parallel: StrictInt | None = None
    enabled: StrictBool | None = None
    admin: StrictBool | None = None
    inference: StrictBool | None = None


# -- usage -----------------------------------------------------------------------------------------
class Stat(BaseModel):
    mean: float | None = None
    max: float | None = None
    p50: float | None = Field(None, description="Where the database computes percentiles")
    p95: float | None = None


class UsageRow(BaseModel):
    """One group: its keys (those of `group_by`) and its totals."""

    model_config = ConfigDict(extra="allow")

    token: str | None = None
    model: str | None = None
    replica: str | None = None
    priority: int | None = None
    hour: str | None = None
    day: str | None = None
    requests: int
    errors: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    queue_wait_s: Stat
    ttfb_s: Stat
    total_s: Stat


class UsageAggregate(BaseModel):
    object: Literal["usage.aggregate"] = "usage.aggregate"
    since: str
    until: str
    group_by: list[str]
    token: str | None = Field(None, description="The token filter, if any")
    model: str | None = Field(None, description="The model filter, if any")
    percentiles: bool = Field(description="true: p50/p95 computed by the database; false: means and max only")
    data: list[UsageRow]


class UsageRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    created_at: str
    token: str
    model: str
    replica: str
    priority: int
    status: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_wait_s: float | None = None
    ttfb_s: float | None = None
    total_s: float | None = None
    request_id: str | None = None


class UsageRecords(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
    has_more: bool
    last_id: int | None = Field(None, description="Pass it as `after` for the next (older) page")


# -- live state ------------------------------------------------------------------------------------
class ReplicaState(BaseModel):
    replica: str
    url: str
    ready: bool
    in_flight: int
    max_concurrency: int
    running: float | None = Field(None, description="vLLM's running requests")
    waiting: float | None = Field(None, description="vLLM's waiting requests")
    kv_cache_usage: float | None = Field(None, description="0-1")
    tokens_per_second: float | None = Field(None, description="vLLM's generation throughput")
    admission: str | None = Field(None, description="The consumer's admission decision (admit, at_max_concurrency...)")
    heartbeat_age_s: float


class ModelState(BaseModel):
    model: str
    queue_depth: int | None = Field(None, description="Tickets waiting (all senders); null: broker unreachable")
    replicas: list[ReplicaState]


class ModelsState(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelState]


class QueueState(BaseModel):
    model: str
    queue_depth: int | None
    in_flight: int = Field(description="Granted requests on its replicas")
    capacity: int = Field(description="Sum of its ready replicas' max concurrency")
    replicas_ready: int
    refusals: dict[str, int] = Field(description="Refusals by reason in the window (this sender)")
    admission: dict[str, str] = Field(description="Replica -> its consumer's admission decision")


class QueuesState(BaseModel):
    object: Literal["list"] = "list"
    window_s: int
    data: list[QueueState]
    other_refusals: dict[str, int] = Field(
        description="Refusals not attributable to a served model (no or bad token, unknown model, bad body)"
    )
