"""Changes to a job's rollout, by job name: the one path from an operator's intent to the flag.

The rollouts store writes each change (validated, versioned, audited in the same transaction);
this module maps the job to its flag and tells this process's flag cache at once, so the
process that made a change routes by it immediately and every other one within the cache TTL.
Both the Toolkit's API and the rollout controller change flags through it.
"""

from __future__ import annotations

from collections.abc import Container

from openfeature.provider import FeatureProvider

from toolkit.config import LEGACY
from toolkit.errors import BackendNotEnabled
from toolkit.flags.provider import RolloutProvider
from toolkit.jobs import JobRegistry, JobSpec
from toolkit.store.audit import default_actor
from toolkit.store.models import RolloutState
from toolkit.store.rollouts import RolloutStore, RolloutView, parse_percentage


class FlagChanges:
    """Every rollout change of the jobs in ``jobs``, written by ``rollouts``.

    ``backends`` are the names this app enabled (the Toolkit's live mapping): a percentage above
    0 toward any other backend is refused, since every run would silently fall back to legacy.
    """

    def __init__(
        self,
        jobs: JobRegistry,
        rollouts: RolloutStore,
        provider: FeatureProvider | None,
        backends: Container[str] | None = None,
    ) -> None:
        self._jobs = jobs
        self._rollouts = rollouts
        self._provider = provider
        self._backends = backends

    def view(self, job: str) -> RolloutView:
        """The job's rollout as stored now (0 % with the job's target when never set)."""
        spec = self._jobs.get(job)
        return self._rollouts.get(spec.flag_key, on_variant=spec.target)

    def set_percentage(
        self,
        job: str,
        percentage: object,
        *,
        reason: str,
        actor: str | None = None,
        expected_version: int | None = None,
        action: str = "rollout.set",
    ) -> RolloutView:
        """Route ``percentage`` of the job's keys to its target; ``action`` names the audit
        entry (``rollout.rollback``, ``rollout.advance``...). Above 0 % the job's target must
        be enabled in this app (:class:`BackendNotEnabled` otherwise, nothing changed)."""
        spec = self._jobs.get(job)
        if parse_percentage(percentage) > 0:
            self.check_enabled(spec)
        view = self._rollouts.set_percentage(
            spec.flag_key,
            percentage,
            on_variant=spec.target,
            actor=actor or default_actor(),
            reason=reason,
            expected_version=expected_version,
            action=action,
        )
        return self._changed(view)

    def set_listed(
        self,
        job: str,
        key: str,
        *,
        which: str,
        present: bool = True,
        reason: str,
        actor: str | None = None,
    ) -> RolloutView:
        """Add (or remove) ``key`` on the allow or deny list: ``which`` is ``allow``/``deny``."""
        spec = self._jobs.get(job)
        view = self._rollouts.set_listed(
            spec.flag_key,
            key,
            which=which,
            present=present,
            on_variant=spec.target,
            actor=actor or default_actor(),
            reason=reason,
        )
        return self._changed(view)

    def set_killed(
        self, job: str, killed: bool, *, reason: str, actor: str | None = None
    ) -> RolloutView:
        """Kill switch: every key to legacy whatever the percentage (or resume the split)."""
        spec = self._jobs.get(job)
        state = RolloutState.KILLED if killed else RolloutState.ACTIVE
        view = self._rollouts.set_state(
            spec.flag_key,
            state,
            on_variant=spec.target,
            actor=actor or default_actor(),
            reason=reason,
        )
        return self._changed(view)

    def set_paused(
        self, job: str, paused: bool, *, reason: str, actor: str | None = None
    ) -> RolloutView:
        """Hold (or release) the rollout plan; routing is unchanged, so no cache to tell."""
        spec: JobSpec = self._jobs.get(job)
        return self._rollouts.set_paused(
            spec.flag_key,
            paused,
            on_variant=spec.target,
            actor=actor or default_actor(),
            reason=reason,
        )

    def check_enabled(self, spec: JobSpec) -> None:
        """Refuse to route work to a target this app never enabled (``tk.use_backend``)."""
        target = spec.target
        if self._backends is None or target == LEGACY or target in self._backends:
            return
        raise BackendNotEnabled(
            f"job {spec.name!r} targets backend {target!r}, which this app has not enabled: "
            f"every run would go to legacy. Enable it in the app (tk.use_backend({target!r})) "
            "first; nothing was changed"
        )

    def _changed(self, view: RolloutView) -> RolloutView:
        if isinstance(self._provider, RolloutProvider):
            self._provider.invalidate()  # this process routes by the new value at once
        return view
