"""An app with Inngest jobs, for ``toolkit --app tests.support.inngest_app:build inngest check``.

Dev mode: the check needs no keys and no server. The database comes from TOOLKIT_DATABASE_URL.
"""

from __future__ import annotations

import os

import inngest

from toolkit import JobContext, RateLimit, Toolkit

OPENROUTER = RateLimit("openrouter", 20, 60)


def build() -> Toolkit:
    tk = Toolkit(legacy_mode="blocking")

    @tk.job("predict", retries=4, timeout="10m", rate_limit=OPENROUTER, concurrency=5, cost=1)
    def predict(ctx: JobContext, payload: object) -> None:
        ctx.step("call", lambda: None)

    @tk.job(
        "daily-batch",
        event="cron/daily-batch",
        timeout=os.environ.get("TEST_BATCH_TIMEOUT", "1h"),  # lets a test change the code
        inngest={"priority": inngest.Priority(run="event.data.urgent ? 120 : 0")},
    )
    def daily(ctx: JobContext, payload: object) -> None:
        return None

    @tk.job("summarize", rate_limit=OPENROUTER)
    def summarize(ctx: JobContext, payload: object) -> None:
        return None

    @tk.job("local-only", target="celery")
    def local(ctx: JobContext, payload: object) -> None:
        return None

    tk.use_backend("inngest", app_id="check-app", is_production=False)
    return tk
