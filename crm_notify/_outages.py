"""Telling an outage of a service crm-notify depends on (the broker, the database) from a
bug, so that a pass failing every second while Redis is down logs one line, not a traceback."""

from __future__ import annotations

import dramatiq.errors
import pika.exceptions
import redis.exceptions
import sqlalchemy.exc

#: Errors that mean a service is unreachable or went away, not that the code is wrong.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    dramatiq.errors.BrokerConnectionError,
    sqlalchemy.exc.OperationalError,
)


#: What a package's errors are about, for the message.
_SERVICES = {"redis": "Redis", "pika": "RabbitMQ", "dramatiq": "the broker"}


def outage(exc: BaseException) -> str | None:
    """A one-line description of ``exc`` when it (or what caused it) is an outage of the broker
    or the database; ``None`` for any other error. Never includes SQL parameters."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        carried = getattr(seen, "message", None)
        if isinstance(seen, dramatiq.errors.DramatiqError) and isinstance(carried, BaseException):
            # Dramatiq's RabbitMQ broker wraps pika's error as its message (``from None``)
            described = outage(carried)
            if described is not None:
                return described
        if isinstance(seen, OUTAGE_ERRORS):
            if isinstance(seen, sqlalchemy.exc.DBAPIError):
                cause = "".join(str(seen.orig).strip().splitlines()[:1])
                return f"database unavailable ({type(seen.orig).__name__}: {cause})"
            name = type(seen).__name__
            text = (str(seen) or repr(seen)).removeprefix(f"{name}: ")  # pika's str is empty
            first = "".join(text.strip().splitlines()[:1])
            service = _SERVICES.get(type(seen).__module__.split(".")[0], "a connection")
            return f"{service} unavailable ({name}: {first})"
        seen = seen.__cause__ or seen.__context__
    return None
