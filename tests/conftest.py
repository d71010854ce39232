"""Fixtures: databases (SQLite always, PostgreSQL when configured), Redis, SMTP, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pydantic.v1  # noqa: F401  (see below)
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from crm_notify.config import Settings, load_settings
from crm_notify.db import make_engine
from crm_notify.migrations import upgrade
from tests.support.brokers import SharedBroker
from tests.support.servers import (
    PrivateRabbitMQ,
    PrivateRedis,
    SmtpSink,
    port_open,
    start_or_skip,
    start_smtp_sink,
)

# FastAPI imports pydantic.v1 the first time it builds a route; done inside a test that froze
# the clock (freezegun), that import fails (its classes meet freezegun's fake datetime). It is
# imported once here, before any test runs, so the order of the tests does not matter.

#: The repository root (sample rules and templates live here).
ROOT = Path(__file__).resolve().parent.parent

#: PostgreSQL for the suite, e.g. postgresql://postgres@127.0.0.1:5432/test (unset: SQLite only).
POSTGRES_URL = os.environ.get("CRM_NOTIFY_TEST_DATABASE_URL", "")


def _postgres_schema_url(schema: str) -> str:
    url = sa.engine.make_url(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
        if POSTGRES_URL.startswith("postgresql://")
        else POSTGRES_URL
    )
    return url.render_as_string(hide_password=False) + (
        ("&" if url.query else "?") + "options=" + quote(f"-csearch_path={schema}")
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crm-notify.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("CRM_NOTIFY_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(_postgres_schema_url("public"))
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated database."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """The machine's Redis on 127.0.0.1:6379 when reachable, else a private redis-server."""
    if os.environ.get("CRM_NOTIFY_TEST_REDIS_URL"):
        yield os.environ["CRM_NOTIFY_TEST_REDIS_URL"]
    elif port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    else:
        server = PrivateRedis()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The machine's RabbitMQ on 127.0.0.1:5672 when reachable, else a private node (Debian's
    rabbitmq-server, which `make test` installs where it may)."""
    if os.environ.get("CRM_NOTIFY_TEST_RABBITMQ_URL"):
        yield os.environ["CRM_NOTIFY_TEST_RABBITMQ_URL"]
    elif port_open("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672/%2F"
    else:
        server = start_or_skip(PrivateRabbitMQ)
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def rabbitmq_queue(rabbitmq_url: str) -> Iterator[str]:
    """A queue name of this test's own; its queues (with Dramatiq's delay and dead-letter
    queues) are deleted afterwards."""
    name = f"crm_notify_test_{uuid.uuid4().hex[:10]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    for queue in (name, f"{name}.DQ", f"{name}.XQ"):
        channel.queue_delete(queue)
    connection.close()


#: The brokers the tests that need one run on, each in turn.
BROKERS = ("redis", "rabbitmq")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> SharedBroker:
    """Each broker in turn: Redis (``CRM_NOTIFY_REDIS_URL``, as most set-ups name it) and
    RabbitMQ (``CRM_NOTIFY_BROKER_URL``). A test for one of them only takes
    ``@pytest.mark.parametrize("broker", ["redis"], indirect=True)``."""
    if request.param == "redis":
        return SharedBroker(
            "redis",
            {
                "redis_url": request.getfixturevalue("redis_server_url"),
                "redis_namespace": request.getfixturevalue("redis_namespace"),
            },
        )
    return SharedBroker(
        "rabbitmq",
        {
            "broker_url": request.getfixturevalue("rabbitmq_url"),
            "queue_name": request.getfixturevalue("rabbitmq_queue"),
        },
    )


@pytest.fixture
def redis_namespace(redis_server_url: str) -> Iterator[str]:
    """A key namespace of this test's own; its keys are deleted before and after."""
    namespace = f"crm-notify-test-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_server_url)

    def clean() -> None:
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)

    clean()
    yield namespace
    clean()
    client.close()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An aiosmtpd server on loopback that keeps what it receives."""
    sink, controller = start_smtp_sink()
    yield sink
    controller.stop()


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    """Build Settings for a test: its own var dir and database, the sample rules/templates."""

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "var_dir": tmp_path / "var",
            "rules_dir": ROOT / "rules",
            "templates_dir": ROOT / "templates",
            "esp_url": f"file://{tmp_path / 'var' / 'outbox'}",
            "relay_interval_s": 0.2,
            "outbound_allow_networks": "loopback",
        }
        values.update(overrides)
        return load_settings(None, **values)

    return build
