"""run arm (the backend the flag assigned) and TRUNCATE blocked on the audit log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The row-level triggers of 0001 never see TRUNCATE; a statement-level trigger does. It reuses
# 0001's function, which raises for any TG_OP.
_PG_TRUNCATE = (
    "CREATE TRIGGER toolkit_audit_no_truncate BEFORE TRUNCATE ON toolkit_audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION toolkit_audit_append_only()"
)


def upgrade() -> None:
    # ADD COLUMN with a default is native on both databases (no table copy, CHECKs intact);
    # existing rows get the best record there is of their assignment: the backend a fallback
    # left, else the one they are on. PostgreSQL then drops the default, so an INSERT without
    # an arm fails; SQLite cannot drop a default without copying the table, and keeps it.
    op.add_column(
        "toolkit_runs",
        sa.Column("arm", sa.String(length=50), server_default="", nullable=False),
    )
    op.execute("UPDATE toolkit_runs SET arm = COALESCE(fallback_from, backend)")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("toolkit_runs", "arm", server_default=None)
        op.execute(_PG_TRUNCATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS toolkit_audit_no_truncate ON toolkit_audit")
    op.drop_column("toolkit_runs", "arm")
