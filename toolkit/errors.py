"""One exception hierarchy; every error carries a stable code and the CLI exit code it maps to.

Exit codes are part of the contract with scripts: 1 means "the operation failed",
2 means "you asked for something invalid and nothing was changed".
"""

from __future__ import annotations

from typing import Any

EXIT_FAILURE = 1
EXIT_USAGE = 2


class ToolkitError(Exception):
    """Root of every error the toolkit raises on purpose."""

    code = "toolkit_error"
    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- bad input: nothing was changed -------------------------------------------------


class InvalidInput(ToolkitError):
    code = "invalid_input"
    exit_code = EXIT_USAGE


class InvalidPercentage(InvalidInput):
    code = "invalid_percentage"


class InvalidPayload(InvalidInput):
    code = "invalid_payload"


class InvalidDuration(InvalidInput):
    code = "invalid_duration"


class UnknownJob(InvalidInput):
    code = "unknown_job"


class UnknownRun(InvalidInput):
    code = "unknown_run"


class AmbiguousRun(InvalidInput):
    """A short run id that more than one run starts with."""

    code = "ambiguous_run"


class UnknownBackend(InvalidInput):
    code = "unknown_backend"


class BackendNotEnabled(InvalidInput):
    """A rollout above 0 % toward a backend this app never enabled: every run would fall back."""

    code = "backend_not_enabled"


class DuplicateJob(InvalidInput):
    code = "duplicate_job"


class AppLoadError(InvalidInput):
    code = "app_load_error"


class ConfigError(InvalidInput):
    code = "config_error"


class MissingExtra(ConfigError):
    """An optional backend was asked for without its dependencies installed."""

    code = "missing_extra"

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"the {extra!r} backend needs the {module!r} package: "
            f"pip install 'flagshift-toolkit[{extra}]'"
        )
        self.extra = extra


class BrokerConfigError(ConfigError):
    """A durable-backend setting that would lose or duplicate runs (e.g. a short visibility
    timeout), refused before any work is taken."""

    code = "broker_config"


# --- operations that failed ---------------------------------------------------------


class InsufficientCredits(ToolkitError):
    code = "insufficient_credits"

    def __init__(self, account: str, needed: int, balance: int) -> None:
        super().__init__(
            f"account {account!r} has {balance} credits, the job costs {needed}; nothing was queued"
        )
        self.account = account
        self.needed = needed
        self.balance = balance


class VersionConflict(ToolkitError):
    """Optimistic lock lost: someone changed the rollout since it was read."""

    code = "version_conflict"


class DatabaseError(ToolkitError):
    code = "database_error"


class BackendUnavailable(ToolkitError):
    """A backend refused or could not take a submission (event API down, broker down)."""

    code = "backend_unavailable"


class RateLimitUnavailable(ToolkitError):
    """The store of a shared rate limit (Redis) cannot be reached: the start waits, it is not
    let through unlimited."""

    code = "rate_limit_unavailable"


class RunLost(ToolkitError):
    """The executing attempt no longer owns the run (cancelled, failed by cleanup, or retried)."""

    code = "run_lost"


class RunFailed(ToolkitError):
    """A Celery task's way of reporting that its run failed for good: raised (as an expected
    exception, never retried) so the worker logs the task as failed, not as succeeded."""

    code = "run_failed"


# --- raised by job code ---------------------------------------------------------------


class NonRetriableError(ToolkitError):
    """Raise from job code to fail the run at once, without further retries."""

    code = "non_retriable"


class JobTimeout(NonRetriableError):
    """The run exceeded its job's timeout; like Inngest's finish timeout, it is not retried."""

    code = "job_timeout"


class StepOutputNotSerializable(NonRetriableError):
    """Retrying cannot make an output serializable: the run fails at once."""

    code = "step_output_not_serializable"


# --- rollout decisions refused (exit 1); the evaluation is a rollout.types.StepEvaluation ---


class GatesFailed(ToolkitError):
    code = "gates_failed"

    def __init__(self, message: str, evaluation: Any) -> None:
        super().__init__(message)
        self.evaluation = evaluation


class GatesInconclusive(ToolkitError):
    code = "gates_inconclusive"

    def __init__(self, message: str, evaluation: Any) -> None:
        super().__init__(message)
        self.evaluation = evaluation


class RolloutPaused(ToolkitError):
    code = "rollout_paused"


class RolloutKilled(ToolkitError):
    code = "rollout_killed"


class StepComplete(ToolkitError):
    """Advance asked for at the plan's last step."""

    code = "rollout_complete"


class RolledBack(ToolkitError):
    """watch rolled the job back: the alert, as an exit code."""

    code = "rolled_back"


# --- Inngest ----------------------------------------------------------------------


class InngestConfigError(ConfigError):
    """A job declares something Inngest would reject at sync time, or cannot honour."""

    code = "inngest_config"


class InngestSendError(BackendUnavailable):
    """The event API did not accept a run's event (unreachable, refused, or bad event key)."""

    code = "inngest_send_failed"


class InngestDrift(ToolkitError):
    """The registered configuration differs from the code or from the snapshot."""

    code = "inngest_drift"


class SnapshotMissing(InvalidInput):
    code = "inngest_snapshot_missing"


class SnapshotInvalid(InvalidInput):
    code = "inngest_snapshot_invalid"
