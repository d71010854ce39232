"""Fault injection: the Redis broker killed, down for a while, and restarted (a private
``redis-server``; the API, a worker and the relay keep running)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

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
from tests.support.servers import PrivateRedis, SmtpSink
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: How long Redis stays down while events keep arriving (the issue's figure).
OUTAGE_S = 30.0


@pytest.fixture
def durable_redis() -> Iterator[PrivateRedis]:
    """A private Redis with an append-only file, fsynced every write."""
    server = PrivateRedis(appendonly="yes", appendfsync="always")
    yield server
    server.stop()


@pytest.fixture
def volatile_redis() -> Iterator[PrivateRedis]:
    """A private Redis without persistence: a restart empties it."""
    server = PrivateRedis()
    yield server
    server.stop()


@one_database
def test_events_arriving_while_redis_is_down_are_accepted_and_delivered_after_it_returns(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    durable_redis: PrivateRedis,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """Redis is killed (SIGKILL) and stays down for 30 seconds while the shop keeps sending a
    batch a second; then it is started again on the same port and directory (AOF).

    Every batch during the outage is acknowledged at its first attempt (the events and their
    notifications are committed; the enqueue after the commit fails and is logged), and
    nothing is sent. After Redis returns, the relay enqueues the ``pending`` notifications
    and the worker, which reconnects by itself, sends each exactly once.
    """
    # Given a service and a worker on a Redis that persists every write
    population = Population("rd", 40)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        CRM_NOTIFY_REDIS_URL=durable_redis.url,
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

    # When Redis dies and the shop keeps sending for 30 seconds
    durable_redis.kill()
    down_at = time.monotonic()
    during = batches[5:35]
    for number, batch in enumerate(during, start=1):
        assert client.send(service.url, batch) == 1  # acknowledged at once
        time.sleep(max(0.0, down_at + OUTAGE_S * number / len(during) - time.monotonic()))
    slowest_s = client.slowest_s
    delivered_while_down = len(smtp_sink.messages)
    waiting = count_by_status(engine)

    # Then, once Redis is back, everything is delivered, exactly once
    durable_redis.start()
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
        f"all {report.notifications} sent {recovered_s:.1f}s after Redis returned"
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
    """No worker runs while 40 notifications are queued in a Redis without persistence; Redis
    is killed and comes back empty, and then a worker starts.

    The broker messages are gone (Redis is empty after the restart), but each notification is
    still a ``queued`` row: the relay enqueues it again once the lease has passed, and each is
    sent exactly once.
    """
    # Given notifications queued in Redis, and no worker
    population = Population("rv", 24)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        CRM_NOTIFY_REDIS_URL=volatile_redis.url,
    )
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    calls = [population.identify(i) for i in range(population.size)]
    calls += [population.track(i, 0) for i in range(population.size)]
    calls += [population.identify_blocked(), population.track("blocked", 0)]
    expected = population.expected_keys(calls)
    Client(key).send(service.url, calls)
    assert count_by_status(engine) == {"queued": len(expected)}

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
