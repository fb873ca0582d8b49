"""How values and errors are stored: JSON as the database returns it, errors as one line."""

from __future__ import annotations

import json
from typing import Any

from toolkit.errors import StepOutputNotSerializable


def to_json(value: Any, *, what: str) -> Any:
    """The value as it will come back from the database, or a clear error if it cannot."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StepOutputNotSerializable(f"{what} is not JSON-serializable: {exc}") from exc


def describe(exc: BaseException) -> str:
    """``Type: message``, as a run's error records it, capped at 4000 characters."""
    return f"{type(exc).__name__}: {exc}"[:4000]
