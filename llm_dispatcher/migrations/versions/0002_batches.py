"""The Files and Batch APIs: files, batches, batch_lines; a token's batch priority.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types in llm_dispatcher/db/models.py as of this revision.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
MYSQL_TABLE_ARGS: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}


def upgrade() -> None:
    op.add_column("tokens", sa.Column("batch_priority", sa.Integer, nullable=True))
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.Integer, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("content", LongText, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_files_token_id", "files", ["token_id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.Integer, nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("errors", sa.Text, nullable=True),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        *(
            sa.Column(f"{name}_at", sa.BigInteger, nullable=True)
            for name in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_batches_token_id", "batches", ["token_id"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(64), nullable=False),
        sa.Column("line_no", sa.Integer, nullable=False),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("body", LongText, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claim_until", sa.BigInteger, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("response", LongText, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("batch_id", "line_no", name="pk_batch_lines"),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_batch_lines_batch_id_state", "batch_lines", ["batch_id", "state"])


def downgrade() -> None:
    op.drop_table("batch_lines")
    op.drop_table("batches")
    op.drop_table("files")
    op.drop_column("tokens", "batch_priority")
