"""Drift detection for the Inngest functions: registered vs declared vs a saved snapshot.

*Registered* is what the SDK would send Inngest at sync, read from the built functions.
*Declared* is what the jobs say (retries, timeout, rate limit, concurrency, event), derived
here independently of the builder, so a mapping bug or an SDK upgrade that changes the
registration shows up. The *snapshot* is a JSON file committed with the code: a change to it
is a change to production's flow control and should be reviewed as one.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.backends.inngest.backend import InngestBackend
from toolkit.backends.inngest.functions import (
    CANCELLED_SUFFIX,
    CLEANUP_RETRIES,
    FAILURE_SUFFIX,
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    IDEMPOTENCY,
)
from toolkit.errors import InngestConfigError, SnapshotInvalid, SnapshotMissing

SNAPSHOT_VERSION = 1
DEFAULT_SNAPSHOT = "inngest-functions.json"
PLACEHOLDER_URL = "http://app.invalid/api/inngest"  # runtime URLs are the deploy's, not config
_DURATION = re.compile(r"^(\d+)([wdhms])$")
_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_FIELDS = {"period", "timeout", "start", "finish"}

Fields = dict[str, Any]


@dataclass(frozen=True)
class Difference:
    function: str
    field: str
    kind: str  # "code" (declared != registered), "snapshot", "new", "removed"
    declared: Any = None
    registered: Any = None
    snapshot: Any = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, for JSON output."""
        return dict(self.__dict__)


# --- the three views ---------------------------------------------------------------------


def registered(backend: InngestBackend) -> dict[str, Fields]:
    """Function id → flattened fields of the config the SDK sends at sync."""
    out: dict[str, Fields] = {}
    for fn in backend.functions():
        config = fn.get_config(PLACEHOLDER_URL)
        for part in (config.main, config.on_failure):
            if part is None:
                continue
            raw = part.to_dict()
            if isinstance(raw, Exception):  # e.g. a duration Inngest would reject at sync
                raise InngestConfigError(f"function {fn.id}: {raw}") from raw
            out[str(raw["id"])] = _flatten(raw)
    return out


def declared(backend: InngestBackend) -> dict[str, Fields]:
    """Function id → the fields the jobs' declarations imply, computed from the JobSpecs."""
    app = backend.client.app_id
    out: dict[str, Fields] = {}
    for job in backend.jobs:
        if job.target != backend.name:
            continue
        main = f"{app}-{job.name}"
        fields: Fields = {
            "name": job.name,
            "triggers": [{"event": job.event}],
            "retries": job.retries,
            "timeouts.finish": job.timeout,
            "idempotency": IDEMPOTENCY,
        }
        if job.rate_limit is not None:
            fields["throttle.limit"] = job.rate_limit.limit
            fields["throttle.period"] = job.rate_limit.period
            fields["throttle.burst"] = 1
        concurrency = [{"limit": job.concurrency}] if job.concurrency is not None else []
        for key, value in dict(job.options.get("inngest") or {}).items():
            if key == "concurrency":
                concurrency += [_model(c) for c in value]
            elif key == "cancel":
                fields["cancel"] = [_model(c) for c in value]
            else:
                for sub, v in _model(value).items():
                    fields[f"{key}.{sub}"] = _seconds(sub, v)
        if concurrency:
            fields["concurrency"] = concurrency
        out[main] = fields
        out[f"{main}{FAILURE_SUFFIX}"] = {
            "name": f"{job.name} (failure)",
            "triggers": [
                {"event": FUNCTION_FAILED, "expression": f"event.data.function_id == '{main}'"}
            ],
            "retries": 0,
        }
        out[f"{app}-{job.name}{CANCELLED_SUFFIX}"] = {
            "name": f"{job.name} (cancelled)",
            "triggers": [
                {"event": FUNCTION_CANCELLED, "expression": f"event.data.function_id == '{main}'"}
            ],
            "retries": CLEANUP_RETRIES,
        }
    return out


def notes(backend: InngestBackend) -> list[str]:
    """Things that are not drift but an operator should know."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for job in backend.jobs:
        if job.target == backend.name and job.rate_limit is not None:
            by_key[job.rate_limit.key].append(job.name)
    return [
        f"rate limit {key!r} is shared by {', '.join(jobs)}: on Inngest each function has its "
        f"own throttle, so together they may start {len(jobs)}x the limit"
        for key, jobs in sorted(by_key.items())
        if len(jobs) > 1
    ]


# --- comparing -----------------------------------------------------------------------------


def compare(
    declared_: dict[str, Fields], registered_: dict[str, Fields], snapshot: dict[str, Fields]
) -> list[Difference]:
    """Every field where declared and registered disagree ("code"), then each function new,
    removed or changed since the snapshot; empty when all agree."""
    diffs: list[Difference] = []
    for fn_id in sorted(set(declared_) | set(registered_)):
        want, got = declared_.get(fn_id, {}), registered_.get(fn_id, {})
        for field in sorted(set(want) | set(got)):
            if not _same(want.get(field), got.get(field)):
                diffs.append(Difference(fn_id, field, "code", want.get(field), got.get(field)))
    for fn_id in sorted(set(registered_) | set(snapshot)):
        if fn_id not in snapshot:
            diffs.append(Difference(fn_id, "*", "new", registered=registered_[fn_id]))
            continue
        if fn_id not in registered_:
            diffs.append(Difference(fn_id, "*", "removed", snapshot=snapshot[fn_id]))
            continue
        got, saved = registered_[fn_id], snapshot[fn_id]
        for field in sorted(set(got) | set(saved)):
            if not _same(got.get(field), saved.get(field)):
                diffs.append(
                    Difference(
                        fn_id,
                        field,
                        "snapshot",
                        declared=declared_.get(fn_id, {}).get(field),
                        registered=got.get(field),
                        snapshot=saved.get(field),
                    )
                )
    return diffs


def read_snapshot(path: Path) -> tuple[str | None, dict[str, Fields]]:
    """(app id, functions) from a committed snapshot; SnapshotMissing names the command that
    writes one, SnapshotInvalid a file that is not a current snapshot."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotMissing(
            f"no snapshot at {path}: run 'toolkit inngest check --write-snapshot' and commit it"
        ) from None
    except (OSError, ValueError) as exc:
        raise SnapshotInvalid(f"cannot read the snapshot {path}: {exc}") from exc
    functions = data.get("functions") if isinstance(data, dict) else None
    if data.get("version") != SNAPSHOT_VERSION or not isinstance(functions, dict):
        raise SnapshotInvalid(f"{path} is not a version {SNAPSHOT_VERSION} toolkit snapshot")
    return data.get("app_id"), functions


def write_snapshot(path: Path, app_id: str, functions: dict[str, Fields]) -> None:
    """Sorted, indented JSON: a review's diff shows just the fields that changed."""
    body = {"version": SNAPSHOT_VERSION, "app_id": app_id, "functions": functions}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- normalising -------------------------------------------------------------------------------


def _flatten(raw: dict[str, Any]) -> Fields:
    """The registration body as flat, comparable fields: durations in seconds, no None."""
    step = raw.get("steps", {}).get("step", {})
    fields: Fields = {
        "name": raw.get("name"),
        "triggers": [_strip(t) for t in raw.get("triggers") or []],
        "retries": (step.get("retries") or {}).get("attempts"),
        "idempotency": raw.get("idempotency"),
        "concurrency": [_strip(c) for c in raw.get("concurrency") or []] or None,
        "cancel": [_strip(c) for c in raw.get("cancel") or []] or None,
    }
    for key in ("timeouts", "throttle", "rateLimit", "priority", "debounce", "batchEvents",
                "singleton"):  # fmt: skip
        for sub, value in _strip(raw.get(key) or {}).items():
            fields[f"{key}.{sub}"] = _seconds(sub, value)
    return {k: v for k, v in fields.items() if v is not None}


def _model(value: Any) -> Any:
    """An SDK option object as the SDK serializes it, without None values."""
    raw = value.to_dict()
    if isinstance(raw, Exception):
        raise InngestConfigError(f"invalid Inngest option {value!r}: {raw}") from raw
    return _strip(raw)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if v is not None]
    return value


def _seconds(field: str, value: Any) -> Any:
    """'15m' → 900 for duration fields (and timedelta-like numbers stay numbers)."""
    if field not in _DURATION_FIELDS:
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(match.group(1)) * _UNIT[match.group(2)]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)
