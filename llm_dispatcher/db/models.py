"""Table definitions (SQLAlchemy Core) and the plain records the rest of the project sees.

Portable across SQLite, PostgreSQL and MySQL/MariaDB: bounded VARCHARs, DOUBLE for seconds,
DATETIME(6) on MySQL, and naive UTC in every datetime column (converted to aware UTC on read).
The migration in `llm_dispatcher/migrations/versions` creates exactly these tables.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

NAME_LEN = 128
HASH_LEN = 64
MODEL_LEN = 255
REPLICA_LEN = 255
REQUEST_ID_LEN = 64
END_USER_LEN = 255

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# DATETIME without fsp truncates to whole seconds on MySQL.
UtcDateTime = sa.DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# usage grows without bound: 64-bit ids, except SQLite where only INTEGER PRIMARY KEY autoincrements.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(NAME_LEN), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(HASH_LEN), nullable=False, unique=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("threshold", sa.Integer, nullable=False),
    sa.Column("allowed_models", sa.Text, nullable=True),  # JSON list; NULL = every model
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("batch_priority", sa.Integer, nullable=True),  # NULL: batch lines run at `priority`
    # roles: the admin API and console; the /v1 API (an admin-only token gets 403 there)
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("inference", sa.Boolean, nullable=False, server_default=sa.true()),
    # Per-key limits (NULL: none): requests in parallel, per minute, tokens per minute; parallel per end user.
    sa.Column("max_parallel", sa.Integer, nullable=True),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("user_max_parallel", sa.Integer, nullable=True),
    mysql_charset="utf8mb4",
    mysql_engine="InnoDB",
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("token_id", sa.Integer, nullable=True),
    sa.Column("token_name", sa.String(NAME_LEN), nullable=False),
    sa.Column("model", sa.String(MODEL_LEN), nullable=False),
    sa.Column("replica", sa.String(REPLICA_LEN), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("queue_wait_s", sa.Double, nullable=False),
    sa.Column("ttfb_s", sa.Double, nullable=True),
    sa.Column("total_s", sa.Double, nullable=False),
    sa.Column("request_id", sa.String(REQUEST_ID_LEN), nullable=False),
    sa.Column("end_user", sa.String(END_USER_LEN), nullable=True),  # the `user` field or OpenWebUI's user header
    # the usage reports: one token's or one model's rows of a time range (migration 0003)
    sa.Index("ix_usage_token_name_created_at", "token_name", "created_at"),
    sa.Index("ix_usage_model_created_at", "model", "created_at"),
    mysql_charset="utf8mb4",
    mysql_engine="InnoDB",
)


# -- the Files and Batch APIs (times as epoch seconds, as OpenAI's objects carry them) -------------
ID_LEN = 64
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("token_id", sa.Integer, nullable=False, index=True),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # base64 in a text column: aiomysql cannot bind bytes with the PyMySQL it installs
    sa.Column("content", LongText, nullable=False),
    mysql_charset="utf8mb4",
    mysql_engine="InnoDB",
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("token_id", sa.Integer, nullable=False, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("input_file_id", sa.String(ID_LEN), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("metadata", sa.Text, nullable=True),  # JSON object
    sa.Column("errors", sa.Text, nullable=True),  # JSON list of {code, message, param, line}
    sa.Column("output_file_id", sa.String(ID_LEN), nullable=True),
    sa.Column("error_file_id", sa.String(ID_LEN), nullable=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("in_progress_at", sa.BigInteger, nullable=True),
    sa.Column("finalizing_at", sa.BigInteger, nullable=True),
    sa.Column("completed_at", sa.BigInteger, nullable=True),
    sa.Column("failed_at", sa.BigInteger, nullable=True),
    sa.Column("expired_at", sa.BigInteger, nullable=True),
    sa.Column("cancelling_at", sa.BigInteger, nullable=True),
    sa.Column("cancelled_at", sa.BigInteger, nullable=True),
    mysql_charset="utf8mb4",
    mysql_engine="InnoDB",
)

# One row per input line; the database is the truth of its state. `state`: pending (not yet run, or
# given back), running (claimed by `claimed_by` until `claim_until`, epoch ms), done (result stored).
batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(ID_LEN), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("model", sa.String(MODEL_LEN), nullable=False),
    sa.Column("body", LongText, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_by", sa.String(ID_LEN), nullable=True),
    sa.Column("claim_until", sa.BigInteger, nullable=True),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("response", LongText, nullable=True),  # the answer's JSON body
    sa.Column("error", sa.Text, nullable=True),  # JSON {code, message} when no HTTP answer came
    sa.Column("request_id", sa.String(REQUEST_ID_LEN), nullable=True),
    sa.Index("ix_batch_lines_batch_id_state", "batch_id", "state"),
    mysql_charset="utf8mb4",
    mysql_engine="InnoDB",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_db_time(value: datetime | None) -> datetime | None:
    """Aware (any zone) or naive-meaning-UTC -> naive UTC, the form every column stores."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def from_db_time(value: datetime | None) -> datetime | None:
    """Naive UTC from the database -> aware UTC. Drivers that return aware values are normalised."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as the gateway sees it. Never carries the plaintext or the hash."""

    id: int
    name: str
    priority: int
    threshold: int
    allowed_models: tuple[str, ...] | None
    expires_at: datetime | None
    enabled: bool
    batch_priority: int | None = None  # the priority of its batch lines (None: `priority`)
    admin: bool = False  # may call the admin API and sign in to the console
    inference: bool = True  # may call the /v1 API
    max_parallel: int | None = None  # requests waiting or in flight at once (None: no limit)
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # prompt + completion tokens per minute
    user_max_parallel: int | None = None  # requests at once per end user of this token
    created_at: datetime | None = dataclasses.field(default=None, compare=False)  # informational

    def allows(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())

    @property
    def effective_batch_priority(self) -> int:
        return self.priority if self.batch_priority is None else min(self.batch_priority, self.priority)


@dataclasses.dataclass(slots=True)
class UsageRecord:
    """One row of `usage`: one per proxied request, whatever its outcome."""

    token_id: int | None
    token_name: str
    model: str
    replica: str
    priority: int
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    queue_wait_s: float
    ttfb_s: float | None
    total_s: float
    request_id: str
    created_at: datetime = dataclasses.field(default_factory=utcnow)
    end_user: str | None = None
