"""rollout plan: paused flag on toolkit_rollouts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Additive: existing rows read as not paused; no table rewrite on either database.
    op.add_column(
        "toolkit_rollouts",
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # Native DROP COLUMN (SQLite >= 3.35, PostgreSQL): no table copy, the CHECKs stay intact.
    op.drop_column("toolkit_rollouts", "paused")
