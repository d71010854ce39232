"""Fault injection: the broker killed, down for a while, and restarted (a private
``redis-server`` or RabbitMQ node; never the machine's own)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
import redis
from sqlalchemy.engine import Engine

from crm_notify.worker.actors import QUEUE_NAME
from tests.conftest import BROKERS
from tests.faults._harness import (
    Client,
    Population,
    all_sent,
    check_exactly_once,
    count_by_status,
    fault_env,
    set_up_database,
    wait_until,
)
from tests.faults.conftest import Processes, one_database
from tests.support.servers import PrivateRabbitMQ, PrivateRedis, SmtpSink, start_or_skip
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: How long the broker stays down while events keep arriving (the issue's figure).
OUTAGE_S = 30.0


@dataclass
class RestartableBroker:
    """A private broker server and the settings that point crm-notify at it."""

    server: PrivateRedis | PrivateRabbitMQ
    env: dict[str, str]


@pytest.fixture(params=BROKERS)
def durable_broker(request: pytest.FixtureRequest) -> RestartableBroker:
    """A private Redis with an append-only file fsynced every write, or a private RabbitMQ node
    (durable queues, persistent messages): each keeps its messages through a crash."""
    if request.param == "rabbitmq":
        rabbitmq: PrivateRabbitMQ = request.getfixturevalue("private_rabbitmq")
        return RestartableBroker(rabbitmq, {"CRM_NOTIFY_BROKER_URL": rabbitmq.url})
    redis_server = PrivateRedis(appendonly="yes", appendfsync="always")
    request.addfinalizer(redis_server.stop)
    return RestartableBroker(redis_server, {"CRM_NOTIFY_REDIS_URL": redis_server.url})


@pytest.fixture
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    """A private RabbitMQ node (skipped outside CI where Debian's rabbitmq-server is missing)."""
    server = start_or_skip(PrivateRabbitMQ)
    yield server
    server.stop()


@pytest.fixture
def volatile_redis() -> Iterator[PrivateRedis]:
    """A private Redis without persistence: a restart empties it."""
    server = PrivateRedis()
    yield server
    server.stop()


@dataclass
class QueuedWithoutWorker:
    """What :func:`queue_without_worker` set up."""

    env: dict[str, str]
    service: ServiceProcess
    population: Population
    expected: set[str]


def queue_without_worker(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    smtp_sink: SmtpSink,
    processes: Processes,
    **broker_env: str,
) -> QueuedWithoutWorker:
    """A service on the broker of ``broker_env`` and no worker; 24 contacts (one suppressed)
    identified and tracked, so that their notifications are all ``queued`` in the broker."""
    population = Population("rq", 24)
    key = set_up_database(engine, population)
    env = fault_env(tmp_path, database_url=database_url, esp_url=smtp_sink.url, **broker_env)
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    calls = population.identify_then_order_once()
    expected = population.expected_keys(calls)
    Client(key).send(service.url, calls)
    assert count_by_status(engine) == {"queued": len(expected)}
    return QueuedWithoutWorker(env, service, population, expected)


@one_database
def test_events_arriving_while_the_broker_is_down_are_accepted_and_delivered_after_it_returns(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    durable_broker: RestartableBroker,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """The broker (Redis, RabbitMQ) is killed (SIGKILL) and stays down for 30 seconds while
    the shop keeps sending a batch a second; then it is started again on the same port and
    data directory.

    Every batch during the outage is acknowledged at its first attempt (the events and their
    notifications are committed; the enqueue after the commit fails and is logged), and
    nothing is sent. After the broker returns, the relay enqueues the ``pending``
    notifications and the worker, which reconnects by itself, sends each exactly once.
    """
    # Given a service and a worker on a broker that keeps its messages through a crash
    population = Population("rd", 40)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path, database_url=database_url, esp_url=smtp_sink.url, **durable_broker.env
    )
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    client = Client(key)
    batches = [[population.identify(i), population.track(i, 0)] for i in range(population.size)]
    batches[0] += [population.identify_blocked(), population.track("blocked", 0)]
    expected = population.expected_keys(call for batch in batches for call in batch)
    for batch in batches[:5]:
        client.send(service.url, batch)
    wait_until("the first sends", lambda: len(smtp_sink.messages) >= 5, timeout_s=30)

    # When the broker dies and the shop keeps sending for 30 seconds
    durable_broker.server.kill()
    down_at = time.monotonic()
    during = batches[5:35]
    for number, batch in enumerate(during, start=1):
        assert client.send(service.url, batch) == 1  # acknowledged at once
        time.sleep(max(0.0, down_at + OUTAGE_S * number / len(during) - time.monotonic()))
    slowest_s = client.slowest_s
    delivered_while_down = len(smtp_sink.messages)
    waiting = count_by_status(engine)

    # Then, once the broker is back, everything is delivered, exactly once
    durable_broker.server.start()
    up_at = time.monotonic()
    for batch in batches[35:]:
        client.send(service.url, batch)
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    recovered_s = time.monotonic() - up_at
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    assert waiting["pending"] >= 30  # the outage's notifications waited in the outbox
    assert client.statuses == {200: len(batches)} and not client.errors
    print(
        f"\ndown {up_at - down_at:.0f}s: {waiting['pending']} notifications pending, "
        f"{delivered_while_down} sent before the kill, slowest answer {slowest_s:.2f}s; "
        f"all {report.notifications} sent {recovered_s:.1f}s after the broker returned"
    )


@one_database
def test_redis_restarted_empty_loses_queued_messages_and_the_relay_requeues_them(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    volatile_redis: PrivateRedis,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """No worker runs while 32 notifications are queued in a Redis without persistence; Redis
    is killed and comes back empty, and then a worker starts.

    The broker messages are gone (Redis is empty after the restart), but each notification is
    still a ``queued`` row: the relay enqueues it again once the lease has passed, and each is
    sent exactly once.
    """
    # Given notifications queued in Redis, and no worker
    queued = queue_without_worker(
        tmp_path,
        engine,
        database_url,
        smtp_sink,
        processes,
        CRM_NOTIFY_REDIS_URL=volatile_redis.url,
    )
    env, population, expected = queued.env, queued.population, queued.expected

    # When Redis restarts empty, and a worker starts
    volatile_redis.kill()
    volatile_redis.start()
    restarted_at = time.monotonic()
    assert redis.Redis.from_url(volatile_redis.url).dbsize() == 0
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))

    # Then the relay requeues every lost message after the lease; each is sent once
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    recovered_s = time.monotonic() - restarted_at
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    print(f"\n{report.notifications} sent {recovered_s:.1f}s after Redis restarted empty")


@one_database
def test_rabbitmq_crashed_with_messages_queued_keeps_them(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    private_rabbitmq: PrivateRabbitMQ,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """No worker runs while 32 notifications are queued in RabbitMQ; the API is killed (so no
    relay can queue anything again), then RabbitMQ is killed and restarted.

    Each message was published persistent to a durable queue and confirmed by the node, so the
    queue holds all of them after the crash; a worker alone (no relay runs) sends each
    exactly once.
    """
    # Given notifications queued in RabbitMQ, and no worker
    rabbitmq = private_rabbitmq
    broker_env = {"CRM_NOTIFY_BROKER_URL": rabbitmq.url}
    queued = queue_without_worker(
        tmp_path, engine, database_url, smtp_sink, processes, **broker_env
    )
    env, population, expected = queued.env, queued.population, queued.expected

    # When the API dies, and RabbitMQ crashes and restarts
    queued.service.kill()
    rabbitmq.kill()
    rabbitmq.start()
    restarted_at = time.monotonic()
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    kept = connection.channel().queue_declare(QUEUE_NAME, durable=True, passive=True)
    connection.close()
    assert kept.method.message_count == len(expected)

    # Then a worker sends each of them, once
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    recovered_s = time.monotonic() - restarted_at
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    print(
        f"\n{report.notifications} kept by RabbitMQ and sent {recovered_s:.1f}s after its restart"
    )
