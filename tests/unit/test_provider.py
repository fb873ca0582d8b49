"""The rollouts provider with a fake store and a fake clock: cache bound, rules, never raising."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from toolkit.flags.bucketing import in_rollout
from toolkit.flags.provider import RolloutProvider
from toolkit.store.rollouts import RolloutView, unset


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeStore:
    def __init__(self, *views: RolloutView) -> None:
        self.views = list(views)
        self.loads = 0
        self.broken: Exception | None = None

    def load(self) -> list[RolloutView]:
        self.loads += 1
        if self.broken:
            raise self.broken
        return list(self.views)


def rollout(pct: str, **changes: object) -> RolloutView:
    # ``changes`` are forwarded as given: replace() checks each field only at runtime
    return replace(unset("job", "inngest"), percentage=Decimal(pct), version=1, **changes)  # type: ignore[arg-type]


def ctx(key: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=key)


def test_reads_hit_the_store_at_most_once_per_ttl() -> None:
    store, clock = FakeStore(rollout("100")), FakeClock()
    provider = RolloutProvider(store.load, ttl=1.0, clock=clock)
    for i in range(1000):
        provider.resolve_string_details("job", "legacy", ctx(f"k{i}"))
    assert store.loads == 1
    store.views = [rollout("0")]  # a rollback in another process
    clock.now += 0.999
    assert provider.resolve_string_details("job", "legacy", ctx("k1")).value == "inngest"
    clock.now += 0.002  # just past a second: the rollback is visible
    assert provider.resolve_string_details("job", "legacy", ctx("k1")).value == "legacy"
    assert store.loads == 2


def test_invalidate_applies_own_changes_at_once() -> None:
    store, clock = FakeStore(rollout("0")), FakeClock()
    provider = RolloutProvider(store.load, clock=clock)
    assert provider.resolve_string_details("job", "legacy", ctx("k")).value == "legacy"
    store.views = [rollout("100")]
    provider.invalidate()
    assert provider.resolve_string_details("job", "legacy", ctx("k")).value == "inngest"


def test_rules_in_order_kill_deny_allow_split() -> None:
    view = rollout("50", allow=frozenset({"a"}), deny=frozenset({"d"}))
    provider = RolloutProvider(FakeStore(view).load)
    allowed = provider.resolve_string_details("job", "legacy", ctx("a"))
    assert (allowed.value, allowed.reason, allowed.variant) == (
        "inngest",
        Reason.TARGETING_MATCH,
        "on",
    )
    denied = provider.resolve_string_details("job", "legacy", ctx("d"))
    assert (denied.value, denied.reason) == ("legacy", Reason.TARGETING_MATCH)
    for key in ("u1", "u2", "u3", "u4"):
        split = provider.resolve_string_details("job", "legacy", ctx(key))
        expected = "inngest" if in_rollout("job", key, 5000) else "legacy"
        assert (split.value, split.reason) == (expected, Reason.SPLIT)
    killed = RolloutProvider(FakeStore(replace(view, state="killed")).load)
    result = killed.resolve_string_details("job", "legacy", ctx("a"))
    assert (result.value, result.reason) == ("legacy", Reason.DISABLED)


def test_unknown_flag_is_default_without_error() -> None:
    provider = RolloutProvider(FakeStore().load)
    result = provider.resolve_string_details("never-rolled-out", "legacy", ctx("k"))
    assert (result.value, result.reason, result.error_code) == ("legacy", Reason.DEFAULT, None)


def test_store_failure_routes_to_default_with_error_and_recovers() -> None:
    store, clock = FakeStore(rollout("100")), FakeClock()
    store.broken = ConnectionError("database down")
    provider = RolloutProvider(store.load, clock=clock)
    result = provider.resolve_string_details("job", "legacy", ctx("k"))
    assert result.value == "legacy" and result.error_code == ErrorCode.GENERAL
    assert "database down" in (result.error_message or "")
    store.broken = None
    clock.now += 1.5
    assert provider.resolve_string_details("job", "legacy", ctx("k")).value == "inngest"


def test_missing_targeting_key_and_wrong_types_are_errors() -> None:
    provider = RolloutProvider(FakeStore(rollout("50")).load)
    missing = provider.resolve_string_details("job", "legacy", EvaluationContext())
    assert missing.error_code == ErrorCode.TARGETING_KEY_MISSING and missing.value == "legacy"
    assert provider.resolve_boolean_details("job", False).error_code == ErrorCode.TYPE_MISMATCH


def test_through_the_openfeature_client() -> None:
    provider = RolloutProvider(FakeStore(rollout("100")).load)
    api.set_provider_and_wait(provider, "unit-test-domain")
    client = api.get_client("unit-test-domain")
    details = client.get_string_details("job", "legacy", ctx("k"))
    assert details.value == "inngest" and details.reason == Reason.SPLIT
    assert client.get_boolean_value("job", True, ctx("k")) is True  # type mismatch → default


def test_close_releases_the_provider_of_the_toolkit_domain(tmp_path: Path) -> None:
    from toolkit import Toolkit

    tk = Toolkit(f"sqlite:///{tmp_path / 'tk.db'}")
    domain = tk.flag_domain
    assert api.get_provider_metadata(domain).name == tk.provider.get_metadata().name
    tk.close()
    assert api.get_provider_metadata(domain).name == "No-op Provider"
    assert api.get_provider_metadata(None).name != tk.provider.get_metadata().name
