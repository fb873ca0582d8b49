"""Fixtures shared by the integration tests (``tk`` and the databases: ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from tests.jobs_fixture import Calls, register_session_job
from toolkit import Toolkit


@pytest.fixture
def calls(tk: Toolkit) -> Calls:
    """The prediction-session job (three model steps, 5 credits) and 100 credits for ``u1``.

    A test module that needs the job on another backend defines its own ``calls``.
    """
    c = Calls()
    register_session_job(tk, c)
    tk.credits.grant("u1", 100)
    return c
