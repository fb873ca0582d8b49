"""Typed ORM models. Tables are prefixed ``toolkit_`` so they live beside the host app's own."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer ids autoincrement on SQLite only as plain INTEGER; BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC: what every stored timestamp is."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database; SQLite would otherwise hand back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Naive values are taken as UTC; aware ones are converted to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always aware UTC, even from SQLite, which stores no zone."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class RunStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Completed, failed or cancelled: no transition leaves these."""
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class LedgerKind(enum.StrEnum):
    GRANT = "GRANT"
    DEBIT = "DEBIT"
    REFUND = "REFUND"


class RolloutState(enum.StrEnum):
    ACTIVE = "active"
    KILLED = "killed"


def _in(values: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


def _assigned_backend(context: Any) -> str:
    """A row inserted without ``arm`` (seeds, host tooling) was assigned the backend it names;
    dispatch always sets ``arm`` itself, so this never runs on its path."""
    return str(context.get_current_parameters()["backend"])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Run(Base):
    __tablename__ = "toolkit_runs"
    __table_args__ = (
        UniqueConstraint("job", "idempotency_key"),
        CheckConstraint(f"status IN ({_in(RunStatus)})", name="status"),
        CheckConstraint("cost >= 0", name="cost"),
        Index("ix_toolkit_runs_status_created_at", "status", "created_at"),
        Index("ix_toolkit_runs_job_created_at", "job", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    job: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    targeting_key: Mapped[str] = mapped_column(String(200))
    backend: Mapped[str] = mapped_column(String(50))
    # The backend the flag assigned at dispatch, never changed (0003): fallback and recovery
    # move ``backend``, the report and the gates compare by ``arm`` (intent to treat).
    arm: Mapped[str] = mapped_column(String(50), default=_assigned_backend)
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[Any] = mapped_column(JSON)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    account: Mapped[str | None] = mapped_column(String(200))
    cost: Mapped[int] = mapped_column(Integer, default=0)
    route_reason: Mapped[str | None] = mapped_column(String(500))
    fallback_from: Mapped[str | None] = mapped_column(String(50))
    external_id: Mapped[str | None] = mapped_column(String(200))
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]


class Step(Base):
    __tablename__ = "toolkit_steps"
    __table_args__ = (
        UniqueConstraint("run_id", "name"),
        CheckConstraint(f"status IN ({_in(StepStatus)})", name="status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("toolkit_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Rollout(Base):
    __tablename__ = "toolkit_rollouts"
    __table_args__ = (
        CheckConstraint("percentage >= 0 AND percentage <= 100", name="percentage"),
        CheckConstraint(f"state IN ({_in(RolloutState)})", name="state"),
    )

    flag_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    percentage: Mapped[Decimal] = mapped_column(Numeric(5, 2), default=Decimal("0"))
    state: Mapped[str] = mapped_column(String(16), default=RolloutState.ACTIVE.value)
    on_variant: Mapped[str] = mapped_column(String(50))
    off_variant: Mapped[str] = mapped_column(String(50), default="legacy")
    allow: Mapped[list[str]] = mapped_column(JSON, default=list)
    deny: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))
    # The rollout plan's hold: watch and advance leave a paused rollout where it is (0002).
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AuditEntry(Base):
    """Append-only: the migrations install triggers that reject UPDATE, DELETE and (on
    PostgreSQL) TRUNCATE; docs/operations.md gives the role set-up that keeps it so."""

    __tablename__ = "toolkit_audit"
    __table_args__ = (Index("ix_toolkit_audit_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[Any | None] = mapped_column(JSON)
    after: Mapped[Any | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)


class CreditAccount(Base):
    """Running balance per account; the CHECK makes a negative balance impossible.

    The ledger is the history; this row is what a debit conditionally decrements, so two
    concurrent debits cannot both spend the same credits (no read-then-write race).
    """

    __tablename__ = "toolkit_credit_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance"),)

    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CreditEntry(Base):
    __tablename__ = "toolkit_credit_ledger"
    __table_args__ = (
        # NULL run ids (grants) never collide, so this only limits per-run debits/refunds.
        UniqueConstraint("run_id", "kind"),
        CheckConstraint(f"kind IN ({_in(LedgerKind)})", name="kind"),
        CheckConstraint("amount > 0", name="amount"),
        Index("ix_toolkit_credit_ledger_account", "account"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(200))
    run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("toolkit_runs.id", ondelete="RESTRICT")
    )
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeadLetter(Base):
    __tablename__ = "toolkit_dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("toolkit_runs.id", ondelete="CASCADE"), unique=True
    )
    job: Mapped[str] = mapped_column(String(200))
    payload: Mapped[Any] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None]
