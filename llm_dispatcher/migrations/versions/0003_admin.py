"""Token roles (admin, inference) and the indexes the usage reports need.

Existing tokens keep what they could do: no admin rights, inference rights (server defaults).

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Filtered reports (one token, one model) read that token's or model's rows of the time range only.
USAGE_INDEXES = {
    "ix_usage_token_name_created_at": ["token_name", "created_at"],
    "ix_usage_model_created_at": ["model", "created_at"],
}


def upgrade() -> None:
    op.add_column("tokens", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("tokens", sa.Column("inference", sa.Boolean, nullable=False, server_default=sa.true()))
    for name, columns in USAGE_INDEXES.items():
        op.create_index(name, "usage", columns)


def downgrade() -> None:
    for name in USAGE_INDEXES:
        op.drop_index(name, table_name="usage")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("inference")
        batch.drop_column("admin")
