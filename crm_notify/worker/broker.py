"""The Dramatiq broker, built from Settings: Redis when configured, in-process otherwise."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from crm_notify.config import Settings

#: Milliseconds one delivery may run before Dramatiq interrupts it.
DELIVERY_TIME_LIMIT_MS = 120_000


def _middleware() -> list[Middleware]:
    return [
        AgeLimit(),
        TimeLimit(time_limit=DELIVERY_TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=20, min_backoff=1_000, max_backoff=300_000),
    ]


def build_broker(settings: Settings) -> dramatiq.Broker:
    """Return a Redis broker for ``settings.redis_url``, or an in-process broker without one.

    The in-process broker keeps messages in memory only; nothing is lost with it because every
    notification is first a row in the outbox, which the relay re-enqueues after a restart.
    """
    if settings.redis_url:
        return RedisBroker(  # type: ignore[no-untyped-call]
            url=settings.redis_url, namespace=settings.redis_namespace, middleware=_middleware()
        )
    return StubBroker(middleware=_middleware())


def set_broker(broker: dramatiq.Broker) -> None:
    """Make ``broker`` Dramatiq's global broker (needed by the ``dramatiq`` worker CLI)."""
    dramatiq.set_broker(broker)
