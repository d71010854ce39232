"""Fault injection: a client that delivers the same events twice or three times, out of
order, to two API processes at once (Redis and RabbitMQ brokers, a worker process, SMTP sink)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.faults._harness import (
    Client,
    Population,
    all_sent,
    check_exactly_once,
    fault_env,
    set_up_database,
    utc,
    wait_until,
)
from tests.faults.conftest import Processes
from tests.support.brokers import SharedBroker
from tests.support.servers import SmtpSink
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults


def _batches(calls: list[dict[str, Any]], size: int, seed: int) -> list[list[dict[str, Any]]]:
    shuffled = list(calls)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i : i + size] for i in range(0, len(shuffled), size)]


def test_events_sent_twice_and_out_of_order_notify_once(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    broker: SharedBroker,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """Each contact's receipts, its order's "completed" and "shipped" updates (timestamped in
    that order) are sent by two clients at once, each in its own shuffled order and batching,
    to two API processes; one client then sends a third of its batches again.

    Every call is stored once (by messageId), each receipt notifies once, and each order's
    "shipped" email goes out once whichever of its two updates arrived first (a late
    "completed" does not roll the order back, so it cannot be "shipped" twice).
    """
    # Given two API processes and a worker; the contacts are known (identified first)
    population = Population("rp", 20)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        **broker.env,
    )
    apis = [processes.add(ServiceProcess(env, tmp_path / f"serve-{n}.log")) for n in (1, 2)]
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    identifies = [population.identify(i) for i in range(population.size)]
    identifies.append(population.identify_blocked())
    Client(key).send(apis[0].url, identifies)
    calls = []
    for i in [*range(population.size), "blocked"]:
        calls += [population.track(i, n, timestamp=utc(30 - 10 * n)) for n in range(3)]
        order = {"order_id": f"{population.prefix}-o{i}"}
        calls.append(population.track(i, 3, event="Order Completed", timestamp=utc(25), **order))
        calls.append(
            population.track(
                i, 4, event="Order Updated", timestamp=utc(15), status="shipped", **order
            )
        )
    expected = population.expected_keys(calls) | {
        f"shipped:{call['messageId']}"
        for call in calls
        if call["event"] == "Order Updated" and not call["userId"].endswith("blocked")
    }
    assert len(expected) == 60 + 21 + 20

    # When two clients send everything at once, each in its own order, to each API
    first, second = Client(key), Client(key)
    first_batches = _batches(calls, 7, seed=1)
    second_batches = _batches(calls, 5, seed=2)

    def send_all(client: Client, url: str, batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            client.send(url, batch)

    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(send_all, first, apis[0].url, first_batches),
            pool.submit(send_all, second, apis[1].url, second_batches),
        ]
        for future in done:
            future.result(timeout=120)
    # And the first client sends a third of its batches a third time
    send_all(first, apis[1].url, first_batches[::3])

    # Then every call is stored once and every notification sent once
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT message_id FROM event WHERE source <> 'lifecycle'"
        ).all()
    assert sorted(m for (m,) in stored) == sorted(c["messageId"] for c in identifies + calls)
    print(
        f"\n{len(calls)} calls sent {len(calls) * 2 + sum(map(len, first_batches[::3]))} times:"
        f" {report.notifications} notifications, {report.messages} messages; answers "
        f"{dict(first.statuses + second.statuses)}"
    )
