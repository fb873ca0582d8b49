"""Rollout rows: validated, optimistically versioned, every change audited in its transaction.

A change already in effect writes nothing (no version, no audit entry); a change without an
expected version is retried on a concurrent one, so a rollback never reports a conflict."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from toolkit.config import LEGACY
from toolkit.errors import InvalidInput, InvalidPercentage, VersionConflict
from toolkit.store import audit
from toolkit.store.engine import Database
from toolkit.store.models import Rollout, RolloutState, utcnow

_HUNDRED = Decimal(100)
#: Tries of a change without ``expected_version`` before a conflict is reported.
CHANGE_ATTEMPTS = 8


# What a person types: ASCII digits, at most one point, an optional % sign. No underscores
# (``1_0``), exponents, signs, other digits, ``nan`` or ``inf``, which Decimal would accept.
_PLAIN_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)%?")


def parse_percentage(value: object) -> Decimal:
    """0-100 with at most two decimals, written as a person writes it; anything else is an
    error that changes nothing."""
    if isinstance(value, bool):
        raise InvalidPercentage(f"invalid percentage {value!r}")
    if isinstance(value, str):
        if not _PLAIN_NUMBER.fullmatch(value.strip()):
            raise InvalidPercentage(
                f"invalid percentage {value!r}: must be a number from 0 to 100, like 12.5"
            )
        text = value.strip().removesuffix("%")
    elif isinstance(value, int | float | Decimal):
        text = str(value)
    else:
        raise InvalidPercentage(f"invalid percentage {value!r}: must be a number from 0 to 100")
    try:
        pct = Decimal(text)
    except (InvalidOperation, ValueError):
        raise InvalidPercentage(
            f"invalid percentage {value!r}: must be a number from 0 to 100"
        ) from None
    if not pct.is_finite():
        raise InvalidPercentage(f"invalid percentage {value!r}: must be a number from 0 to 100")
    if pct < 0 or pct > _HUNDRED:
        raise InvalidPercentage(f"invalid percentage {value!r}: must be between 0 and 100")
    if pct != pct.quantize(Decimal("0.01")):
        raise InvalidPercentage(f"invalid percentage {value!r}: at most two decimals")
    return pct.quantize(Decimal("0.01"))


def check_key(key: object) -> str:
    """A targeting key an operator can type and read back: not blank, no control characters,
    at most 200 characters."""
    if (
        not isinstance(key, str)
        or not key.strip()
        or len(key) > 200
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
    ):
        raise InvalidInput(
            f"invalid targeting key {key!r}: a non-blank string of at most 200 characters, "
            "without control characters"
        )
    return key


@dataclass(frozen=True)
class RolloutView:
    """An immutable snapshot of one rollout; the provider's cache holds these."""

    flag_key: str
    percentage: Decimal
    state: str
    on_variant: str
    off_variant: str
    allow: frozenset[str]
    deny: frozenset[str]
    version: int
    updated_at: datetime | None
    updated_by: str | None
    paused: bool = False  # the rollout plan's hold; routing ignores it
    #: False when the change asked for was already in effect: nothing written, nothing audited.
    changed: bool = field(default=True, compare=False)

    @property
    def basis_points(self) -> int:
        """The percentage in hundredths of a percent (12.5% is 1250), as bucketing compares it."""
        return int(self.percentage * 100)

    @property
    def killed(self) -> bool:
        """The kill switch is on: every key goes to legacy, allow list and percentage aside."""
        return self.state == RolloutState.KILLED

    @classmethod
    def from_row(cls, r: Rollout) -> RolloutView:
        """From a ``Rollout`` row; lists become frozensets, the percentage two decimals."""
        return cls(
            flag_key=r.flag_key,
            percentage=Decimal(r.percentage).quantize(Decimal("0.01")),
            state=r.state,
            on_variant=r.on_variant,
            off_variant=r.off_variant,
            allow=frozenset(r.allow or ()),
            deny=frozenset(r.deny or ()),
            version=r.version,
            updated_at=r.updated_at,
            updated_by=r.updated_by,
            paused=bool(r.paused),
        )

    def settings(self) -> tuple[object, ...]:
        """What a change can change (not the version or who made it): equal means a no-op."""
        return (
            self.percentage,
            self.state,
            self.on_variant,
            self.off_variant,
            self.allow,
            self.deny,
            self.paused,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in the shape the audit log's before/after entries record."""
        return {
            "flag_key": self.flag_key,
            "percentage": float(self.percentage),
            "state": self.state,
            "on_variant": self.on_variant,
            "off_variant": self.off_variant,
            "allow": sorted(self.allow),
            "deny": sorted(self.deny),
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
            "paused": self.paused,
        }


def unset(flag_key: str, on_variant: str) -> RolloutView:
    """What a job without a rollout row behaves as: 0%, everything on legacy."""
    return RolloutView(
        flag_key,
        Decimal("0.00"),
        RolloutState.ACTIVE,
        on_variant,
        LEGACY,
        frozenset(),
        frozenset(),
        0,
        None,
        None,
    )


class RolloutStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> list[RolloutView]:
        """Every stored rollout, in one read: what the flag provider caches."""
        with self._db.transaction() as s:
            return [RolloutView.from_row(r) for r in s.scalars(select(Rollout)).all()]

    def get(self, flag_key: str, *, on_variant: str) -> RolloutView:
        """The stored rollout, or the unset view (0 %, version 0) when the job never had one."""
        with self._db.transaction() as s:
            row = s.get(Rollout, flag_key)
            return RolloutView.from_row(row) if row else unset(flag_key, on_variant)

    # --- changes ---------------------------------------------------------------------------

    def set_percentage(
        self,
        flag_key: str,
        percentage: object,
        *,
        on_variant: str,
        actor: str,
        reason: str,
        expected_version: int | None = None,
        action: str = "rollout.set",
    ) -> RolloutView:
        """Set the percentage (two decimals at most), audited with ``reason``;
        ``expected_version`` fails with VersionConflict if it changed since read."""
        pct = parse_percentage(percentage)
        return self._change(
            flag_key,
            on_variant,
            actor,
            reason,
            action,
            expected_version,
            lambda v: replace(v, percentage=pct),
        )

    def set_state(
        self, flag_key: str, state: RolloutState, *, on_variant: str, actor: str, reason: str
    ) -> RolloutView:
        """Active or killed, audited with ``reason``; no version check,
        so the kill switch always wins."""
        return self._change(
            flag_key,
            on_variant,
            actor,
            reason,
            f"rollout.{state.value}",
            None,
            lambda v: replace(v, state=state.value),
        )

    def set_paused(
        self, flag_key: str, paused: bool, *, on_variant: str, actor: str, reason: str
    ) -> RolloutView:
        """Hold (or release) the rollout plan; versioned, so a concurrent advance loses."""
        return self._change(
            flag_key,
            on_variant,
            actor,
            reason,
            "rollout.pause" if paused else "rollout.resume",
            None,
            lambda v: replace(v, paused=paused),
        )

    def set_listed(
        self,
        flag_key: str,
        key: str,
        *,
        which: str,
        present: bool,
        on_variant: str,
        actor: str,
        reason: str,
    ) -> RolloutView:
        """Add or remove ``key`` on the allow or deny list; a key is never on both."""
        check_key(key)
        if which not in ("allow", "deny"):
            raise InvalidInput(f"unknown list {which!r}: allow or deny")
        other = "deny" if which == "allow" else "allow"

        def change(v: RolloutView) -> RolloutView:
            lists: dict[str, frozenset[str]] = {"allow": v.allow, "deny": v.deny}
            if present:
                lists[which] = lists[which] | {key}
                lists[other] = lists[other] - {key}
            else:
                lists[which] = lists[which] - {key}
            return replace(v, allow=lists["allow"], deny=lists["deny"])

        action = f"rollout.{which}" if present else f"rollout.un{which}"
        return self._change(flag_key, on_variant, actor, reason, action, None, change)

    def _change(
        self,
        flag_key: str,
        on_variant: str,
        actor: str,
        reason: str,
        action: str,
        expected_version: int | None,
        change: Callable[[RolloutView], RolloutView],
    ) -> RolloutView:
        """Apply ``change`` to the stored rollout. Without ``expected_version`` a concurrent
        change is retried on the new value (a rollback must win, not ask the operator to retry);
        with it, the conflict is the caller's answer. A change already in effect writes nothing."""
        if not reason or not reason.strip():
            raise InvalidInput("a reason is required for every rollout change")
        if "\x00" in reason:
            raise InvalidInput("a reason cannot contain a NUL character")
        if expected_version is not None and not 0 <= expected_version < 2**31:
            raise InvalidInput(f"--expect-version {expected_version} is not a rollout version")
        for attempt in range(CHANGE_ATTEMPTS):
            try:
                return self._change_once(
                    flag_key, on_variant, actor, reason, action, expected_version, change
                )
            except VersionConflict:
                if expected_version is not None:
                    raise
                time.sleep(0.005 * (attempt + 1))  # let the other writer commit
        raise VersionConflict(
            f"rollout {flag_key!r} changed concurrently {CHANGE_ATTEMPTS} times in a row: "
            "nothing was changed, run the command again"
        )

    def _change_once(
        self,
        flag_key: str,
        on_variant: str,
        actor: str,
        reason: str,
        action: str,
        expected_version: int | None,
        change: Callable[[RolloutView], RolloutView],
    ) -> RolloutView:
        try:
            with self._db.transaction() as s:
                row = s.get(Rollout, flag_key)
                before = RolloutView.from_row(row) if row else unset(flag_key, on_variant)
                if expected_version is not None and expected_version != before.version:
                    raise VersionConflict(
                        f"rollout {flag_key!r} is at version {before.version}, "
                        f"not {expected_version}: re-read it and retry"
                    )
                after = change(before)
                if after.settings() == before.settings():
                    return replace(before, changed=False)
                after = replace(after, version=before.version + 1, updated_by=actor)
                self._write(s, before, after)
                audit.record(
                    s,
                    actor=actor,
                    action=action,
                    target=flag_key,
                    before=before.as_dict() if row else None,
                    after=after.as_dict(),
                    reason=reason,
                )
        except IntegrityError as exc:  # a concurrent first write created the row
            raise VersionConflict(f"rollout {flag_key!r} changed concurrently: retry") from exc
        return self.get(flag_key, on_variant=on_variant)

    @staticmethod
    def _write(s: Session, before: RolloutView, after: RolloutView) -> None:
        values = {
            "percentage": after.percentage,
            "state": after.state,
            "on_variant": after.on_variant,
            "off_variant": after.off_variant,
            "allow": sorted(after.allow),
            "deny": sorted(after.deny),
            "version": after.version,
            "updated_at": utcnow(),
            "updated_by": after.updated_by,
            "paused": after.paused,
        }
        if before.version == 0:
            s.add(Rollout(flag_key=after.flag_key, **values))
            s.flush()
            return
        moved = s.execute(
            update(Rollout)
            .where(Rollout.flag_key == before.flag_key, Rollout.version == before.version)
            .values(**values)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise VersionConflict(f"rollout {before.flag_key!r} changed concurrently: retry")
