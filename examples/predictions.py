"""The seed scenario as an app the ``toolkit`` CLI can load: ``--app examples.predictions:build``.

An LLM prediction product had two kinds of inline work: a daily batch (a cron route called it
directly) and an interactive session of several model calls in a row, paid with user credits
(an API call ran it in the web process). Declared as toolkit jobs, both run unchanged on the
legacy inline executor at 0 %, and move to Inngest or Celery by the flag:

    export TOOLKIT_APP=examples.predictions:build TOOLKIT_DATABASE_URL=sqlite:///demo.db
    toolkit db upgrade
    python -c "from examples.predictions import build, demo; demo(build())"
    toolkit runs list
    export TOOLKIT_BACKENDS=inngest INNGEST_DEV=1   # a rollout needs its target enabled
    toolkit rollout set prediction-session 10 --reason "canary"

``TOOLKIT_BACKENDS=celery`` (a comma-separated list: ``celery``, ``inngest``) enables the new
backends from their environment variables (``TOOLKIT_BROKER_URL``, ``INNGEST_*``); a rollout
above 0 % toward a backend that is not enabled is refused.
"""

from __future__ import annotations

import os
import random
from typing import Any

from toolkit import JobContext, NonRetriableError, Toolkit

MODELS = ("model-a", "model-b", "model-c")
SESSION_COST = 5  # credits


def call_model(model: str, market_id: str) -> dict[str, Any]:
    """Stands in for a paid model call (seconds, and sometimes an error, in the real product)."""
    if market_id == "closed":
        raise NonRetriableError(f"market {market_id!r} is closed: no retry will change that")
    return {"model": model, "market": market_id, "p": round(random.random(), 3)}


def build() -> Toolkit:
    tk = Toolkit(legacy_mode="blocking")  # the database: $TOOLKIT_DATABASE_URL or ./toolkit.db

    @tk.job(
        "prediction-session",
        event="prediction.session.requested",
        retries=3,
        timeout="15m",
        cost=SESSION_COST,
        target="inngest",
    )
    def prediction_session(ctx: JobContext, payload: dict[str, Any]) -> list[dict[str, Any]]:
        # Each model call is a step: a retry or a redelivery does not pay for it twice.
        models = payload.get("models", MODELS)
        return [ctx.step(f"predict-{m}", call_model, m, payload["market_id"]) for m in models]

    @tk.job("daily-batch", event="cron/daily-batch", retries=2, timeout="1h", target="celery")
    def daily_batch(ctx: JobContext, payload: Any) -> int:
        markets = ctx.step("list-markets", lambda: [f"m-{i}" for i in range(3)])
        for market in markets:
            ctx.step(f"score-{market}", call_model, MODELS[0], market)
        return len(markets)

    for name in filter(None, os.environ.get("TOOLKIT_BACKENDS", "").split(",")):
        tk.use_backend(name.strip())
    return tk


def demo(tk: Toolkit, users: int = 3) -> None:
    """A few sessions and one batch, as the web process and the cron route would send them."""
    for n in range(users):
        user = f"user-{n}"
        tk.credits.grant(user, 20, reason="demo credits")
        handle = tk.dispatch(
            "prediction-session",
            {"market_id": "closed" if n == users - 1 else f"m-{n}"},
            key=user,
            idempotency_key=f"session-{n}",
            account=user,
        )
        print(f"{user}: run {handle.run_id} on {handle.backend}: {handle.status}")
    batch = tk.dispatch("daily-batch", None, idempotency_key="daily-batch:demo")
    print(f"daily-batch: run {batch.run_id} on {batch.backend}: {batch.status}")
