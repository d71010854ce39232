"""Fault injection: ``crm-notify serve`` (the API) killed with SIGKILL while a client sends
batches (Redis and RabbitMQ brokers, a worker process, SMTP sink)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.faults._harness import (
    Client,
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
from tests.support.servers import SmtpSink, free_port
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: Runs ``crm-notify`` with a stall at a chosen point (see the module).
INJECT = (sys.executable, str(Path(__file__).parent / "_inject.py"))


def test_api_killed_mid_batch_stores_each_event_once_and_sends_each_notification_once(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    broker: SharedBroker,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """Two kills of the API process while a client posts 30 batches, retrying each until it
    is acknowledged (as the Segment SDKs do).

    1. Exactly when batch 10 has committed and its notifications are not yet on the broker,
       and the client has no answer: the client retries the batch against the restarted API,
       whose answer stores nothing new (messageIds), and the relay enqueues the notifications
       left ``pending``.
    2. At an arbitrary moment while the client keeps posting.

    Counted from the database and the sink: every event stored once, every expected
    notification sent exactly once, nothing to the suppressed or unconsented.
    """
    # Given an API that will stall after committing its 10th batch, and a worker
    population = Population("api", 30)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        **broker.env,
    )
    port = free_port()
    marker = tmp_path / "stalled"
    stalling = dict(
        env,
        FAULT_STALL_POINT="enqueue",
        FAULT_STALL_AT="10",
        FAULT_STALL_MARKER=str(marker),
        # This process's relay must not enqueue the stranded rows before the kill
        CRM_NOTIFY_RELAY_INTERVAL_S="30",
    )
    service = processes.add(
        ServiceProcess(stalling, tmp_path / "serve-1.log", port=port, command=INJECT)
    )
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    batches = [
        [population.identify(i), population.track(i, 0), population.track(i, 1)]
        for i in range(population.size)
    ]
    batches[0] += [population.identify_blocked(), population.track("blocked", 0)]
    expected = population.expected_keys(call for batch in batches for call in batch)
    client = Client(key)
    acknowledged: list[int] = []

    def shop() -> None:
        for index, batch in enumerate(batches):
            client.send(service.url, batch)
            acknowledged.append(index)

    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(shop)
        # When the API is killed after committing batch 10, before enqueueing it
        wait_until("the stall", marker.exists, timeout_s=60)
        service.kill()
        batch_10 = {f"receipt:{call['messageId']}" for call in batches[9][1:]}
        stranded = [row for row in notifications(engine) if row.key in batch_10]
        assert [row.status for row in stranded] == ["pending", "pending"]
        assert 9 not in acknowledged
        service = processes.add(ServiceProcess(env, tmp_path / "serve-2.log", port=port))
        # And killed again at an arbitrary moment, later
        wait_until("batch 20 acknowledged", lambda: len(acknowledged) >= 20, timeout_s=60)
        service.kill()
        killed_at = time.monotonic()
        service = processes.add(ServiceProcess(env, tmp_path / "serve-3.log", port=port))
        restarted_s = time.monotonic() - killed_at
        sending.result(timeout=120)

    # Then every batch was acknowledged, every event stored once, every notification sent once
    assert acknowledged == list(range(len(batches)))
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT message_id FROM event WHERE source <> 'lifecycle'"
        ).all()
    assert sorted(m for (m,) in stored) == sorted(c["messageId"] for b in batches for c in b)
    print(
        f"\n{report.notifications} notifications, {report.messages} messages; client saw "
        f"{dict(client.statuses)} and {dict(client.errors)}; API back in {restarted_s:.1f}s"
    )
