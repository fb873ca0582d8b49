"""Celery backend settings: defaults, validation, and the Celery configuration they imply.

The durability settings and why each is there: docs/celery.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from toolkit.errors import BrokerConfigError

BROKER_URL_ENV = "TOOLKIT_BROKER_URL"
RATE_LIMIT_URL_ENV = "TOOLKIT_RATE_LIMIT_URL"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
TASK_PREFIX = "toolkit.run."
_REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def mask_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable broker url>"
    return url


@dataclass(frozen=True)
class CelerySettings:
    """What the backend needs to know; every field has a production default."""

    broker_url: str = field(
        default_factory=lambda: os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL
    )
    queue: str = "toolkit"
    visibility_timeout: float = 3600.0
    time_limit_grace: float = 10.0
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    retry_delay: float = 5.0  # when the database or the rate-limit store is unreachable
    rate_limit_url: str | None = None
    key_prefix: str = "toolkit:"
    publish_retries: int = 1
    connect_timeout: float = 2.0
    socket_timeout: float = 5.0
    transport_options: dict[str, Any] = field(default_factory=dict)
    celery_config: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        """The broker URL's scheme, lower-cased ("" when it has none)."""
        return urlsplit(self.broker_url).scheme.lower()

    @property
    def is_redis(self) -> bool:
        """A Redis broker: visibility timeouts apply, and it can hold the rate-limit buckets."""
        return self.scheme in _REDIS_SCHEMES

    @property
    def is_amqp(self) -> bool:
        """A RabbitMQ (AMQP) broker: no visibility timeout to check."""
        return self.scheme in _AMQP_SCHEMES

    def validate(self) -> None:
        """Raise BrokerConfigError for settings that would lose or duplicate work (e.g.
        ``stale_after`` under two heartbeats)."""
        if not self.scheme:
            raise BrokerConfigError(f"broker URL {mask_url(self.broker_url)!r} has no scheme")
        for name in ("visibility_timeout", "heartbeat_interval", "stale_after", "retry_delay"):
            if not getattr(self, name) > 0:
                raise BrokerConfigError(f"celery {name} must be positive")
        if self.time_limit_grace < 0:
            raise BrokerConfigError("celery time_limit_grace must not be negative")
        if self.stale_after < 2 * self.heartbeat_interval:
            raise BrokerConfigError(
                f"celery stale_after ({self.stale_after:g}s) must be at least twice the "
                f"heartbeat_interval ({self.heartbeat_interval:g}s): a live worker that misses "
                "one beat must not be taken over"
            )

    @property
    def publish_policy(self) -> dict[str, float]:
        """Few, short retries: an unreachable broker must fail dispatch fast (→ fallback)."""
        return {
            "max_retries": self.publish_retries,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.2,
        }

    def celery_conf(self) -> dict[str, Any]:
        """The Celery configuration: at-least-once delivery, fast-failing publish."""
        transport: dict[str, Any] = {}
        if self.is_redis:
            transport = {
                "visibility_timeout": self.visibility_timeout,
                "socket_connect_timeout": self.connect_timeout,
                "socket_timeout": self.socket_timeout,
                # sweep for expired unacknowledged messages every 10 s (kombu's default
                # effectively waits 100 s on top of the visibility timeout)
                "unacked_restore_interval": 10,
                "unacked_restore_throttle": 1,
            }
        transport.update(self.transport_options)
        conf: dict[str, Any] = {
            "broker_url": self.broker_url,
            "broker_transport_options": transport,
            "broker_connection_timeout": self.connect_timeout,
            "broker_connection_retry": True,  # a running worker reconnects after a restart
            "broker_connection_retry_on_startup": True,
            "result_backend": None,
            "task_ignore_result": True,
            "task_serializer": "json",
            "accept_content": ["json"],
            "task_default_queue": self.queue,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_acks_on_failure_or_timeout": True,
            "worker_prefetch_multiplier": 1,
            # Keep running attempts alive across a broker blip: their heartbeat keeps them
            # owners, and a redelivered duplicate waits for them (celery_delivery).
            "worker_cancel_long_running_tasks_on_connection_loss": False,
            "worker_hijack_root_logger": True,
            "task_publish_retry": True,
            "task_publish_retry_policy": self.publish_policy,
        }
        conf.update(self.celery_config)
        return conf
