"""Fault injection: PostgreSQL crashes and restarts under the API, a worker, the relay and the
scheduler (a private PostgreSQL cluster; Redis and RabbitMQ brokers; SMTP sink)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from crm_notify.db import make_engine
from crm_notify.migrations import upgrade
from tests.faults._harness import (
    Client,
    HoldingSmtpSink,
    Population,
    all_sent,
    check_exactly_once,
    fault_env,
    notifications,
    set_up_database,
    wait_until,
)
from tests.faults.conftest import Processes
from tests.support.brokers import SharedBroker
from tests.support.servers import PrivatePostgres, start_or_skip
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: How long PostgreSQL stays down.
OUTAGE_S = 5.0
#: The lease of this test: longer than the outage plus the time a worker waits to record a
#: send the ESP accepted (``MARK_SENT_RETRY_DELAYS_S``), as the lease must be (README,
#: ``CRM_NOTIFY_SENDING_LEASE_S``): with the fault tests' usual 3 seconds, the relay would hand
#: that send to another worker while its own still waits for the database, and it would go
#: out twice.
LEASE_S = 20.0


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own (Debian's server programs); skipped outside CI
    where they are not installed."""
    server = start_or_skip(PrivatePostgres)
    yield server
    server.stop()


def test_postgres_crash_and_restart_loses_and_repeats_nothing(
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    broker: SharedBroker,
    holding_sink: HoldingSmtpSink,
    processes: Processes,
) -> None:
    """PostgreSQL is stopped at once (``pg_ctl stop -m immediate``: connections cut, no
    checkpoint, crash recovery at the next start) for 5 seconds while a client keeps posting
    batches, and at the moment a worker has a message accepted by the ESP but not yet
    recorded as ``sent``.

    The API answers 503 meanwhile (nothing written; the client retries); the worker waits the
    outage out before recording that send (no second send after the lease); the relay, the
    scheduler and the worker carry on once the database is back. Every event is stored once and
    every notification sent exactly once.
    """
    # Given a service and a worker on a private PostgreSQL
    url = private_postgres.url
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    upgrade(engine)
    population = Population("pg", 40)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=url,
        esp_url=holding_sink.url,
        **broker.env,
        CRM_NOTIFY_SENDING_LEASE_S=str(LEASE_S),
    )
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    batches = [[population.identify(i), population.track(i, 0)] for i in range(population.size)]
    batches[0] += [population.identify_blocked(), population.track("blocked", 0)]
    expected = population.expected_keys(call for batch in batches for call in batch)
    client = Client(key)
    acknowledged: list[int] = []

    def shop() -> None:
        for index, batch in enumerate(batches):
            client.send(service.url, batch)
            acknowledged.append(index)
            time.sleep(0.25)

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(shop)
        wait_until("the first sends", lambda: len(holding_sink.messages) >= 5, timeout_s=30)
        # When a message is accepted by the ESP, and PostgreSQL dies before the worker hears so
        holding_sink.hold_next_data = True
        wait_until("a message held after DATA", lambda: holding_sink.data_held, timeout_s=30)
        private_postgres.crash()
        down_at = time.monotonic()
        holding_sink.release_data = True
        acknowledged_before = len(acknowledged)
        time.sleep(OUTAGE_S)
        private_postgres.start()
        up_at = time.monotonic()
        acknowledged_during = len(acknowledged) - acknowledged_before
        healthy_s = wait_until(
            "the API healthy again",
            lambda: httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200,
            timeout_s=30,
        )
        recorded_s = wait_until(
            "the held send recorded",
            lambda: any(
                row.id == holding_sink.held_id and row.status == "sent"
                for row in notifications(engine)
            ),
            timeout_s=30,
        )
        sending.result(timeout=120)

    # Then every batch is stored once and every notification sent once; the send accepted
    # during the outage is recorded by its worker, not sent again
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    recovered_s = time.monotonic() - up_at
    report = check_exactly_once(engine, holding_sink, expected_keys=expected, population=population)
    held = next(row for row in notifications(engine) if row.id == holding_sink.held_id)
    assert held.attempts == 1
    assert client.statuses[503] + sum(client.errors.values()) > 0  # the outage was seen
    assert acknowledged_during <= 1  # at most the batch answered just before the crash
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT count(*) FROM event WHERE source <> 'lifecycle'"
        ).scalar()
    assert stored == sum(len(batch) for batch in batches)
    engine.dispose()
    print(
        f"\ndown {up_at - down_at:.1f}s; client saw {dict(client.statuses)} "
        f"{dict(client.errors)}; after the restart: API healthy in {healthy_s:.1f}s, the held "
        f"send recorded in {healthy_s + recorded_s:.1f}s, all {report.notifications} sent in "
        f"{recovered_s:.1f}s (the client's last batches)"
    )
