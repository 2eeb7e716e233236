"""Per-key limits on tokens (max parallel, rpm, tpm, max parallel per end user) and the end user of
each usage record.

Existing tokens have no limits (NULL); existing usage rows no end user.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = ("max_parallel", "rpm", "tpm", "user_max_parallel")


def upgrade() -> None:
    for name in LIMITS:
        op.add_column("tokens", sa.Column(name, sa.Integer, nullable=True))
    op.add_column("usage", sa.Column("end_user", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("end_user")
    with op.batch_alter_table("tokens") as batch:
        for name in reversed(LIMITS):
            batch.drop_column(name)
