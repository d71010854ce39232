"""Brokers (issue 9): Redis or RabbitMQ from CRM_NOTIFY_BROKER_URL (CRM_NOTIFY_REDIS_URL still
works), notifications delivered through each by real Dramatiq workers, and the check of the
Redis settings durability needs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
from sqlmodel import Session, select

from crm_notify.config import load_settings
from crm_notify.errors import ConfigurationError
from crm_notify.events.schemas import parse_call
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification
from crm_notify.runtime import Runtime
from crm_notify.worker.broker import redis_durability_warnings
from tests.support.brokers import SharedBroker
from tests.support.servers import PrivateRedis, SmtpSink, free_port


def test_the_broker_comes_from_broker_url_else_redis_url(tmp_path: Path) -> None:
    def kind(**values: Any) -> tuple[str, str | None]:
        settings = load_settings(None, var_dir=tmp_path, **values)
        return settings.broker_kind, settings.broker

    assert kind() == ("embedded", None)
    assert kind(redis_url="redis://r:6379/0") == ("redis", "redis://r:6379/0")
    assert kind(broker_url="amqp://u:p@mq:5672/%2F") == ("rabbitmq", "amqp://u:p@mq:5672/%2F")
    assert kind(broker_url="amqps://mq/", redis_url="redis://r/0") == ("rabbitmq", "amqps://mq/")
    assert kind(broker_url="redis://q:6379/1", redis_url="redis://r/0")[1] == "redis://q:6379/1"
    with pytest.raises(ConfigurationError, match=r"CRM_NOTIFY_BROKER_URL: .*amqp://"):
        load_settings(None, var_dir=tmp_path, broker_url="kafka://k:9092")


def test_a_redis_that_would_lose_messages_is_named() -> None:
    # Given a Redis as a cache is often set up: no append-only file, keys evicted under pressure
    server = PrivateRedis(appendonly="no", **{"maxmemory-policy": "allkeys-lru"})
    try:
        warnings = redis_durability_warnings(server.url)
    finally:
        server.stop()
    # Then both settings are named, with what to set
    assert len(warnings) == 2
    assert "appendonly no" in warnings[0] and "set appendonly yes" in warnings[0]
    assert "maxmemory-policy allkeys-lru" in warnings[1]
    assert "set maxmemory-policy noeviction" in warnings[1]


def test_a_durable_redis_passes_and_an_unreachable_one_is_said() -> None:
    server = PrivateRedis(appendonly="yes", **{"maxmemory-policy": "noeviction"})
    try:
        assert redis_durability_warnings(server.url) == []
    finally:
        server.stop()
    (line,) = redis_durability_warnings(f"redis://127.0.0.1:{free_port()}/0")
    assert line.startswith("could not check Redis's persistence settings (ConnectionError")


def test_a_notification_goes_through_each_broker(
    broker: SharedBroker, make_settings: Any, smtp_sink: SmtpSink
) -> None:
    # Given a service whose deliveries go through a real broker, consumed by a Dramatiq worker
    runtime = Runtime.from_settings(make_settings(esp_url=smtp_sink.url, **broker.settings))
    upgrade(runtime.engine)
    worker = dramatiq.Worker(runtime.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        # When a shop identifies a new customer (the welcome rule sends at once)
        moment = datetime.now(UTC)
        body = {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}}
        runtime.intake.ingest([parse_call(body, type_hint=None, received_at=moment)])
        (message,) = smtp_sink.wait_for(1, timeout=30)
        # Then the worker delivered it, once
        assert "ada@example.com" in message["To"]
        deadline = time.monotonic() + 10
        while _statuses(runtime) != ["sent"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _statuses(runtime) == ["sent"]
    finally:
        worker.stop(timeout=10_000)
        runtime.close()


def _statuses(runtime: Runtime) -> list[str]:
    with Session(runtime.engine) as session:
        return [str(row.status) for row in session.exec(select(Notification))]


def test_the_commands_say_what_a_broker_lacks(tmp_path: Path, redis_server_url: str) -> None:
    from tests.support.service import run_cli, service_env

    env = service_env({"CRM_NOTIFY_VAR_DIR": str(tmp_path / "var")})
    # Without a broker, a separate worker has nothing to consume
    alone = run_cli(env, "worker", check=False)
    assert alone.returncode == 2
    assert "no broker is configured (CRM_NOTIFY_BROKER_URL or CRM_NOTIFY_REDIS_URL)" in alone.stderr
    # A Redis broker that keeps nothing on disk is named at start-up (a private one here)
    server = PrivateRedis(appendonly="no")
    try:
        env["CRM_NOTIFY_BROKER_URL"] = server.url
        env["CRM_NOTIFY_SENDING_LEASE_S"] = "30"
        run_cli(env, "db", "upgrade")
        started = run_cli(env, "scheduler", "--once")
    finally:
        server.stop()
    assert "warning: Redis has no append-only file (appendonly no)" in started.stderr
    # And so is a lease shorter than a delivery may take (a send in progress sent twice)
    assert "warning: CRM_NOTIFY_SENDING_LEASE_S=30 is shorter than a delivery" in started.stderr


def test_an_outage_is_one_line_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import redis
    import sqlalchemy.exc

    from crm_notify._outages import outage
    from crm_notify._periodic import Periodic

    # Outages are recognised, also as the cause of another error; bugs are not
    down = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6399.")
    assert (
        outage(down)
        == "Redis unavailable (ConnectionError: Error 111 connecting to 127.0.0.1:6399.)"
    )
    try:
        try:
            raise down
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("enqueue failed") from exc
    except RuntimeError as wrapped:
        assert outage(wrapped) is not None
    database = sqlalchemy.exc.OperationalError("SELECT 1", {"email": "x"}, OSError("refused"))
    assert outage(database) == "database unavailable (OSError: refused)"
    assert outage(ValueError("a bug")) is None
    # RabbitMQ's refusal, as Dramatiq's RabbitMQ broker wraps it, is named as RabbitMQ's
    refused = pika.exceptions.AMQPConnectionError(ConnectionRefusedError(111, "refused"))
    described = outage(dramatiq.errors.ConnectionClosed(refused))
    assert described is not None
    assert described.startswith("RabbitMQ unavailable (AMQPConnectionError: ")
    assert "refused" in described

    # A background pass failing on an outage logs one line, without a traceback
    class Failing(Periodic):
        def run_once(self) -> None:
            raise down

    passes = Failing(interval_s=0.05, name="test-pass")
    with caplog.at_level(logging.WARNING, logger="crm_notify._periodic"):
        passes.start()
        time.sleep(0.3)
        passes.stop()
    records = [r for r in caplog.records if r.name == "crm_notify._periodic"]
    assert records and all(r.exc_info is None for r in records)
    assert "test-pass pass failed, Redis unavailable" in records[0].getMessage()
