"""The replay window's reading of ``X-Inngest-Signature`` timestamps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from toolkit import Toolkit
from toolkit.backends.inngest.replay import refused_headers, stale_signature
from toolkit.errors import InngestConfigError

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (None, None),  # unsigned: the SDK's to refuse
        ("", None),
        (f"t={int(NOW)}&s=ab", None),
        (f"t={int(NOW) - 299}&s=ab", None),
        (f"s=ab&t={int(NOW) + 299}", None),  # order of the fields does not matter
        (f"t={int(NOW) - 301}&s=ab", "301s old"),
        (f"t={int(NOW) + 301}&s=ab", "301s in the future"),
        ("t=1&s=ab", "older than the 300s replay window"),
        ("t=soon&s=ab", "not an integer"),
        ("s=ab", "not an integer"),
        ("garbage", "not an integer"),
        # Read as the SDK reads it (parse_qs, first value): a later `t` cannot freshen an old one.
        (f"t={int(NOW) - 600}&s=ab&t={int(NOW)}", "field 't' more than once"),
        (f"t={int(NOW)}&s=ab&s=cd", "field 's' more than once"),
        (f"t={int(NOW)}&s=ab&t=", "field 't' more than once"),
        (f"%74={int(NOW) - 600}&s=ab&t={int(NOW)}", "field 't' more than once"),  # %74 is t
        (f"t={int(NOW) - 600}&s=ab;t={int(NOW)}", "600s old"),  # ';' separates nothing
        (f"t=+{int(NOW)}&s=ab", None),  # int() reads it, as the SDK's does
    ],
)
def test_stale_signature(header: str | None, verdict: str | None) -> None:
    why = stale_signature(header, 300, now=NOW)
    if verdict is None:
        assert why is None
    else:
        assert why is not None and verdict in why


def test_a_repeated_header_is_refused_whatever_its_copies_say() -> None:
    fresh = f"t={int(time.time())}&s=ab"
    assert refused_headers([], 300) is None
    assert refused_headers([fresh], 300) is None
    assert "more than once" in (refused_headers([fresh, fresh], 300) or "")


@pytest.mark.parametrize("max_age", [0, -1.0, "5m", True])
def test_a_replay_window_must_be_positive(tmp_path: Path, max_age: object) -> None:
    pytest.importorskip("inngest")
    with (
        Toolkit(f"sqlite:///{tmp_path / 'tk.db'}") as tk,
        pytest.raises(InngestConfigError, match="signature_max_age must be a positive"),
    ):
        tk.use_backend("inngest", is_production=False, signature_max_age=max_age)
