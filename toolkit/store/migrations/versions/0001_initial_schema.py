"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "toolkit_audit",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_toolkit_audit")),
    )
    op.create_index("ix_toolkit_audit_at", "toolkit_audit", ["at"], unique=False)

    op.create_table(
        "toolkit_credit_accounts",
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_toolkit_credit_accounts_balance")),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_toolkit_credit_accounts")),
    )
    op.create_table(
        "toolkit_rollouts",
        sa.Column("flag_key", sa.String(length=200), nullable=False),
        sa.Column("percentage", sa.Numeric(precision=5, scale=2), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("on_variant", sa.String(length=50), nullable=False),
        sa.Column("off_variant", sa.String(length=50), nullable=False),
        sa.Column("allow", sa.JSON(), nullable=False),
        sa.Column("deny", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint("state IN ('active', 'killed')", name=op.f("ck_toolkit_rollouts_state")),
        sa.CheckConstraint(
            "percentage >= 0 AND percentage <= 100", name=op.f("ck_toolkit_rollouts_percentage")
        ),
        sa.PrimaryKeyConstraint("flag_key", name=op.f("pk_toolkit_rollouts")),
    )
    op.create_table(
        "toolkit_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("targeting_key", sa.String(length=200), nullable=False),
        sa.Column("backend", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=200), nullable=True),
        sa.Column("cost", sa.Integer(), nullable=False),
        sa.Column("route_reason", sa.String(length=500), nullable=True),
        sa.Column("fallback_from", sa.String(length=50), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("recoveries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')",
            name=op.f("ck_toolkit_runs_status"),
        ),
        sa.CheckConstraint("cost >= 0", name=op.f("ck_toolkit_runs_cost")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_toolkit_runs")),
        sa.UniqueConstraint(
            "job", "idempotency_key", name=op.f("uq_toolkit_runs_job_idempotency_key")
        ),
    )
    op.create_index(
        "ix_toolkit_runs_job_created_at", "toolkit_runs", ["job", "created_at"], unique=False
    )
    op.create_index(
        "ix_toolkit_runs_status_created_at", "toolkit_runs", ["status", "created_at"], unique=False
    )

    op.create_table(
        "toolkit_credit_ledger",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('GRANT', 'DEBIT', 'REFUND')", name=op.f("ck_toolkit_credit_ledger_kind")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_toolkit_credit_ledger_amount")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["toolkit_runs.id"],
            name=op.f("fk_toolkit_credit_ledger_run_id_toolkit_runs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_toolkit_credit_ledger")),
        sa.UniqueConstraint("run_id", "kind", name=op.f("uq_toolkit_credit_ledger_run_id_kind")),
    )
    op.create_index(
        "ix_toolkit_credit_ledger_account", "toolkit_credit_ledger", ["account"], unique=False
    )

    op.create_table(
        "toolkit_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["toolkit_runs.id"],
            name=op.f("fk_toolkit_dead_letters_run_id_toolkit_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_toolkit_dead_letters")),
        sa.UniqueConstraint("run_id", name=op.f("uq_toolkit_dead_letters_run_id")),
    )
    op.create_table(
        "toolkit_steps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'COMPLETED', 'FAILED')", name=op.f("ck_toolkit_steps_status")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["toolkit_runs.id"],
            name=op.f("fk_toolkit_steps_run_id_toolkit_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_toolkit_steps")),
        sa.UniqueConstraint("run_id", "name", name=op.f("uq_toolkit_steps_run_id_name")),
    )

    _audit_append_only()


# The audit log is append-only: the database itself rejects UPDATE and DELETE, so no code
# path (ours, a migration, an operator's SQL console) can rewrite history.
_PG_AUDIT = """
CREATE OR REPLACE FUNCTION toolkit_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'toolkit_audit is append-only (% rejected)', TG_OP;
END;
$$ LANGUAGE plpgsql
"""


def _audit_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_AUDIT)
        op.execute(
            "CREATE TRIGGER toolkit_audit_append_only BEFORE UPDATE OR DELETE ON toolkit_audit "
            "FOR EACH ROW EXECUTE FUNCTION toolkit_audit_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER toolkit_audit_no_{verb.lower()} BEFORE {verb} ON toolkit_audit "
                f"BEGIN SELECT RAISE(ABORT, 'toolkit_audit is append-only ({verb} rejected)'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS toolkit_audit_append_only ON toolkit_audit")
        op.execute("DROP FUNCTION IF EXISTS toolkit_audit_append_only()")
    op.drop_table("toolkit_steps")
    op.drop_table("toolkit_dead_letters")

    op.drop_table("toolkit_credit_ledger")

    op.drop_table("toolkit_runs")
    op.drop_table("toolkit_rollouts")
    op.drop_table("toolkit_credit_accounts")

    op.drop_table("toolkit_audit")
