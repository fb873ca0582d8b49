"""``toolkit.web``: the routes wired from a Toolkit, and the cron routes without the Inngest SDK
(a cron-only deployment installs ``flagshift-toolkit[web]``, which does not include it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["inngest"] = None  # as if the SDK were not installed: importing it fails
    from fastapi.testclient import TestClient
    from toolkit import Toolkit
    from toolkit.web import create_app

    tk = Toolkit(sys.argv[1], legacy_mode="blocking")
    tk.migrate()

    @tk.job("daily-batch", target="inngest")
    def daily(ctx, payload):
        return "done"

    client = TestClient(create_app(tk, cron_secret="s3cret"))
    refused = client.get("/api/cron/daily-batch")
    ran = client.get("/api/cron/daily-batch", headers={"Authorization": "Bearer s3cret"})
    print(refused.status_code, ran.status_code, ran.json()["status"], ran.json()["backend"])
    tk.close()
    """
)


def test_cron_routes_from_a_toolkit_without_the_inngest_sdk(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'toolkit.db'}"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["401", "200", "COMPLETED", "legacy"]
