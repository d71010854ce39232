"""The Dramatiq broker, built from Settings: Redis or RabbitMQ when configured, in-process
otherwise; and the check of the Redis settings that durability needs."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
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
#: Seconds to wait for Redis when checking its settings.
CHECK_TIMEOUT_S = 3.0


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
    """The broker of ``settings.broker``: RabbitMQ for ``amqp://`` (durable queues, persistent
    messages, publisher confirms), Redis for ``redis://``, in-process without one.

    The in-process broker keeps messages in memory only; nothing is lost with it because every
    notification is first a row in the outbox, which the relay re-enqueues after a restart.
    """
    url = settings.broker
    if url is None:
        return StubBroker(middleware=_middleware())
    if settings.broker_kind == "rabbitmq":
        return RabbitmqBroker(url=url, confirm_delivery=True, middleware=_middleware())
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=url, namespace=settings.redis_namespace, middleware=_middleware()
    )


def redis_durability_warnings(url: str) -> list[str]:
    """What Redis at ``url`` is set up to lose: messages (no AOF persistence) or keys (an
    eviction policy other than ``noeviction``); one line per problem, or why it could not be
    checked. Empty when both are right."""
    client = redis.Redis.from_url(
        url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError as exc:
        return [f"could not check Redis's persistence settings ({type(exc).__name__}: {exc})"]
    finally:
        client.close()
    warnings = []
    if appendonly != "yes":
        warnings.append(
            "Redis has no append-only file (appendonly no): queued messages are lost when it "
            "restarts; the outbox relay re-enqueues them, late (set appendonly yes)"
        )
    if policy != "noeviction":
        warnings.append(
            f"Redis may evict keys (maxmemory-policy {policy}): queued messages and rate-limit "
            "counters can vanish under memory pressure (set maxmemory-policy noeviction)"
        )
    return warnings


def set_broker(broker: dramatiq.Broker) -> None:
    """Make ``broker`` Dramatiq's global broker (needed by the ``dramatiq`` worker CLI)."""
    dramatiq.set_broker(broker)
