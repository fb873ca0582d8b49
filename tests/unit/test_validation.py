"""Validation of everything a user types or declares: one clear error, nothing half-done."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from toolkit import Toolkit
from toolkit.backends import load_backend
from toolkit.config import parse_duration
from toolkit.errors import (
    ConfigError,
    DuplicateJob,
    InvalidDuration,
    InvalidPercentage,
    MissingExtra,
    UnknownJob,
)
from toolkit.jobs import JobRegistry, JobSpec, make_spec
from toolkit.store.rollouts import parse_percentage


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0", "0.00"),
        ("10", "10.00"),
        ("50.5", "50.50"),
        ("99.99", "99.99"),
        ("100", "100.00"),
        (25, "25.00"),
        (12.5, "12.50"),
        (Decimal("1.10"), "1.10"),
        ("10%", "10.00"),
        (" 7 ", "7.00"),
    ],
)
def test_valid_percentages(value: object, expected: str) -> None:
    assert parse_percentage(value) == Decimal(expected)


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "100.01",
        "abc",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "",
        "1e3",
        "12.345",
        None,
        True,
        float("nan"),
        float("inf"),
        -0.01,
        "1,5",
    ],
)
def test_invalid_percentages(value: object) -> None:
    with pytest.raises(InvalidPercentage):
        parse_percentage(value)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("15m", 900),
        ("90s", 90),
        ("2h", 7200),
        ("1d", 86400),
        ("250ms", 0.25),
        (30, 30),
        (1.5, 1.5),
        (timedelta(minutes=2), 120),
        ("45", 45),
    ],
)
def test_durations(value: str | float | timedelta, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "15 minutes", "-5m", "0", 0, -1, "m", True, "1w"])
def test_invalid_durations(value: str | int) -> None:
    with pytest.raises(InvalidDuration):
        parse_duration(value)


def _spec(**overrides: object) -> JobSpec:
    options: dict[str, object] = dict(
        event=None,
        retries=3,
        timeout="15m",
        target="inngest",
        cost=0,
        fallback="legacy",
        rate_limit=None,
        concurrency=None,
        options={},
    )
    name = str(overrides.pop("name", "job"))
    options.update(overrides)
    # The options are deliberately untyped: the tests pass wrong types to see them rejected.
    return make_spec(lambda ctx, payload: None, name, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "Bad Name"},
        {"name": ""},
        {"retries": -1},
        {"retries": 1.5},
        {"retries": True},
        {"cost": -5},
        {"cost": "5"},
        {"fallback": "retry"},
        {"target": ""},
        {"timeout": "soon"},
        {"concurrency": 0},
    ],
)
def test_job_declaration_errors(overrides: dict[str, object]) -> None:
    with pytest.raises((ConfigError, InvalidDuration)):
        _spec(**overrides)


def test_job_defaults() -> None:
    spec = _spec()
    assert (spec.retries, spec.timeout, spec.max_attempts, spec.event) == (
        3,
        900.0,
        4,
        "toolkit/job.requested",
    )


def test_registry_rejects_duplicates_and_names_known_jobs() -> None:
    registry = JobRegistry()
    registry.add(_spec(name="a"))
    with pytest.raises(DuplicateJob):
        registry.add(_spec(name="a"))
    with pytest.raises(UnknownJob, match=r"unknown job 'b' \(known: a\)"):
        registry.get("b")


def test_optional_backend_names_its_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def no_celery(
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        if name == "celery" or name.startswith("celery."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, globals, locals, fromlist, level)

    tk = Toolkit(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        monkeypatch.delitem(__import__("sys").modules, "celery", raising=False)
        monkeypatch.setattr(builtins, "__import__", no_celery)
        monkeypatch.setattr("importlib.import_module", lambda name: no_celery(name))
        with pytest.raises(MissingExtra, match=r"pip install 'flagshift-toolkit\[celery\]'"):
            load_backend("celery", tk.runtime, tk.jobs)
        with pytest.raises(ConfigError, match="unknown backend"):
            load_backend("kafka", tk.runtime, tk.jobs)
    finally:
        tk.close()
