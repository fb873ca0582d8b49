"""Append-only audit log: who changed what, when, from what to what, and why."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from toolkit.store.engine import Database
from toolkit.store.models import AuditEntry

ACTOR_ENV = "TOOLKIT_ACTOR"
PAGE = 100


def default_actor() -> str:
    """TOOLKIT_ACTOR, else the OS user: every change names a person or a process."""
    env = os.environ.get(ACTOR_ENV)
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the entry's fields, ``at`` in ISO 8601."""
        return {**self.__dict__, "at": self.at.isoformat()}


def record(
    s: Session,
    *,
    actor: str,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
) -> None:
    """One entry in the caller's transaction: the change and its record commit together."""
    s.add(
        AuditEntry(
            actor=actor, action=action, target=target, before=before, after=after, reason=reason
        )
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def entries(
        self, *, since: datetime | None = None, target: str | None = None, limit: int = 1000
    ) -> list[AuditView]:
        """Newest first, at most ``limit``, optionally since a time and for one target only."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if target is not None:
            query = query.where(AuditEntry.target == target)
        with self._db.transaction() as s:
            rows = s.scalars(query).all()
            return [
                AuditView(r.id, r.at, r.actor, r.action, r.target, r.before, r.after, r.reason)
                for r in rows
            ]

    def newest(self, target: str, *, action_prefix: str, page: int = PAGE) -> Iterator[AuditView]:
        """The entries of ``target`` whose action starts with ``action_prefix`` (``"rollout."``),
        newest first, read a page at a time (keyset on id): a caller looking for the last
        rollout move stops after a page or two however long the history is."""
        query = (
            select(AuditEntry)
            .where(AuditEntry.target == target, AuditEntry.action.like(f"{action_prefix}%"))
            .order_by(AuditEntry.id.desc())
            .limit(page)
        )
        before: int | None = None
        while True:
            with self._db.transaction() as s:
                rows = s.scalars(
                    query if before is None else query.where(AuditEntry.id < before)
                ).all()
                views = [_view(r) for r in rows]
            yield from views
            if len(views) < page:
                return
            before = views[-1].id


def _view(r: AuditEntry) -> AuditView:
    return AuditView(r.id, r.at, r.actor, r.action, r.target, r.before, r.after, r.reason)
