"""Payload size and depth limits: a payload past them is refused with InvalidPayload before any
write (no run row, no debit), never as a raw RecursionError or a 10 MB row."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import make_toolkit
from toolkit import JobContext, Toolkit
from toolkit.dispatch.handles import DispatchRequest, PayloadLimits, check_payload
from toolkit.errors import ConfigError, InvalidPayload
from toolkit.store.models import Run

JOB = "charged"


def nested(depth: int) -> Any:
    """``depth`` lists, one inside the other, built without recursion."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def register(tk: Toolkit) -> None:
    @tk.job(JOB, cost=3, target="legacy")
    def charged(ctx: JobContext, payload: object) -> None:
        return None

    tk.credits.grant("acct", 100)


def run_count(tk: Toolkit) -> int:
    with tk.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(Run)) or 0)


BIG = {"blob": "x" * (10 * 1024 * 1024)}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (nested(10_000), "nests deeper than 64 levels"),  # was a raw RecursionError
        (nested(65), "nests deeper than 64 levels"),
        ({"a": [{"b": nested(63)}]}, "nests deeper than 64 levels"),
        (BIG, "over the limit of 1048576"),  # was stored and debited
    ],
    ids=["10000-deep", "65-deep", "65-deep-mixed", "10MB"],
)
def test_a_payload_past_the_limits_is_refused_before_any_write(
    tk: Toolkit, payload: object, message: str
) -> None:
    register(tk)
    with pytest.raises(InvalidPayload, match=message):
        tk.dispatch(JOB, payload, account="acct")
    with pytest.raises(InvalidPayload, match=message):
        tk.dispatch_many(
            JOB,
            [DispatchRequest({"ok": 1}, account="acct"), DispatchRequest(payload, account="acct")],
        )
    assert run_count(tk) == 0
    assert tk.credits.balance("acct") == 100


def test_payloads_at_the_limits_pass(tk: Toolkit) -> None:
    register(tk)
    tk.dispatch(JOB, nested(64), account="acct")
    tk.dispatch(JOB, {"blob": "x" * (1024 * 1024 - 20)}, account="acct")
    assert run_count(tk) == 2


def test_the_limits_are_configurable(tmp_path: Path, sqlite_template: Path) -> None:
    path = tmp_path / "tk.db"
    shutil.copy(sqlite_template, path)
    tk = make_toolkit(f"sqlite:///{path}", max_payload_bytes=100, max_payload_depth=2)
    try:
        register(tk)
        tk.dispatch(JOB, {"a": [1, 2]}, account="acct")
        with pytest.raises(InvalidPayload, match="nests deeper than 2 levels"):
            tk.dispatch(JOB, {"a": [[1]]}, account="acct")
        with pytest.raises(InvalidPayload, match="over the limit of 100"):
            tk.dispatch(JOB, "é" * 60, account="acct")  # 60 characters, 122 bytes of UTF-8
        assert run_count(tk) == 1
    finally:
        tk.close()


@pytest.mark.parametrize(
    "options",
    [
        {"max_payload_bytes": 0},
        {"max_payload_bytes": -1},
        {"max_payload_bytes": 1.5},
        {"max_payload_bytes": True},
        {"max_payload_bytes": "1MB"},
        {"max_payload_depth": 0},
        {"max_payload_depth": 501},
        {"max_payload_depth": None},
    ],
)
def test_bad_limits_are_config_errors(tmp_path: Path, options: dict[str, object]) -> None:
    name = next(iter(options))
    with pytest.raises(ConfigError, match=name):
        make_toolkit(f"sqlite:///{tmp_path / 'tk.db'}", **options)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nested(100_000),
        lambda: {"k": nested(5_000)},
    ],
)
def test_check_payload_never_recurses_out(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidPayload, match="nests deeper"):
        check_payload("job", make(), PayloadLimits(max_depth=500))


def test_a_cycle_is_refused_cleanly() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(InvalidPayload, match="not JSON-serializable"):
        check_payload("job", cycle)
