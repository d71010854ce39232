"""Fault injection: ``crm-notify worker`` killed with SIGKILL in the middle of sends (Redis and
RabbitMQ brokers, SMTP sink)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

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
from tests.support.service import ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults


def test_worker_killed_mid_send_loses_nothing_and_repeats_only_what_the_esp_accepted(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    broker: SharedBroker,
    holding_sink: HoldingSmtpSink,
    processes: Processes,
) -> None:
    """Two kills of the worker (one process, two threads) while it sends 64 notifications.

    1. Both threads are inside an SMTP transaction the ESP has not accepted (held at RCPT):
       their rows are left ``sending``, and the messages the process had prefetched are gone
       with it (Redis) or handed to the next worker (RabbitMQ). The relay requeues the
       ``sending`` rows after the lease; each is sent once.
    2. One thread's message has been accepted (the sink recorded it) but the "250" has not
       reached the worker, the other thread is held at RCPT: the design's one duplicate
       window (README, Delivery). That message is sent again after the lease, and the repeat
       is the stored message with the same Message-ID; nothing else repeats.

    Counted from the sink and the database: every expected notification exactly once (the
    killed-after-acceptance one exactly twice), all ``sent``; nothing to the suppressed
    address; marketing mail only to contacts with consent.
    """
    # Given a service, one worker and a slightly slow ESP
    population = Population("wk", 24)
    key = set_up_database(engine, population)
    env = fault_env(tmp_path, database_url=database_url, esp_url=holding_sink.url, **broker.env)
    holding_sink.rcpt_delay_s = 0.05
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    worker = processes.add(WorkerProcess(env, tmp_path / "worker-1.log"))
    calls = [population.identify(i) for i in range(population.size)]
    calls.append(population.identify_blocked())
    calls += [population.track(i, n) for n in range(2) for i in range(population.size)]
    calls.append(population.track("blocked", 0))
    expected = population.expected_keys(calls)
    assert len(expected) == 64

    # When the shop sends its events and the worker is killed with both threads mid-send
    Client(key).send(service.url, calls)
    wait_until("8 messages", lambda: len(holding_sink.messages) >= 8, timeout_s=60)
    holding_sink.hold_rcpt = True
    wait_until("both threads at RCPT", lambda: holding_sink.held_at_rcpt == 2, timeout_s=10)
    worker.kill()
    holding_sink.hold_rcpt = False
    in_flight = {row.id for row in notifications(engine) if row.status == "sending"}
    assert len(in_flight) == 2

    # And a new worker is killed right after the ESP accepted one message
    worker = processes.add(WorkerProcess(env, tmp_path / "worker-2.log"))
    sent_before = len(holding_sink.messages)
    wait_until("more messages", lambda: len(holding_sink.messages) >= sent_before + 8, timeout_s=60)
    holding_sink.hold_next_data = True
    wait_until("a message held after DATA", lambda: holding_sink.data_held, timeout_s=10)
    holding_sink.hold_rcpt = True
    wait_until("the other thread at RCPT", lambda: holding_sink.held_at_rcpt == 1, timeout_s=10)
    worker.kill()
    accepted_then_killed = holding_sink.held_id
    assert accepted_then_killed is not None
    holding_sink.hold_rcpt = False
    holding_sink.release_data = True

    # Then a third worker and the relay finish the work
    killed_at = time.monotonic()
    processes.add(WorkerProcess(env, tmp_path / "worker-3.log"))
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=90)
    recovered_s = time.monotonic() - killed_at
    report = check_exactly_once(
        engine,
        holding_sink,
        expected_keys=expected,
        population=population,
        may_repeat=lambda row: row.id == accepted_then_killed,
    )
    # The message accepted before the kill went out twice, as the same message; no other did
    assert report.repeated == {accepted_then_killed: 2}
    attempts = {row.id: row.attempts for row in notifications(engine)}
    assert all(attempts[nid] >= 2 for nid in in_flight)  # retried after the lease
    assert attempts[accepted_then_killed] >= 2
    print(
        f"\n{report.notifications} notifications, {report.messages} messages, "
        f"repeated {report.repeated}, all sent {recovered_s:.1f}s after the second kill"
    )
