"""Fault injection: a standalone ``crm-notify scheduler`` killed with SIGKILL in the middle of
firing due timers (Redis and RabbitMQ brokers, a worker process, SMTP sink)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.faults._harness import (
    Client,
    Population,
    all_sent,
    check_exactly_once,
    fault_env,
    notifications,
    set_up_database,
    utc,
    wait_until,
)
from tests.faults.conftest import Processes
from tests.support.brokers import SharedBroker
from tests.support.servers import SmtpSink
from tests.support.service import SchedulerProcess, ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: Runs ``crm-notify`` with a stall at a chosen point (see the module).
INJECT = (sys.executable, str(Path(__file__).parent / "_inject.py"))


def _timers(engine: Engine, rule: str) -> list[tuple[int, str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, status, key FROM timer WHERE rule = :rule ORDER BY id"),
            {"rule": rule},
        )
        return [(row.id, row.status, row.key) for row in rows]


def test_scheduler_killed_mid_fire_fires_every_timer_once_on_the_next_pass(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    broker: SharedBroker,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """A scheduler is killed inside its firing transaction, after 39 of 101 due timers were
    fired in it (each writing a decision and an outbox row).

    The transaction never commits: afterwards no reminder notification exists and every timer
    is still ``pending``. A second scheduler fires all of them: 100 notifications (the
    suppressed contact's timer is skipped), each sent exactly once.
    """
    # Given a service whose own scheduler stays idle, a worker, and a standalone scheduler
    # that stalls when it fires its 40th timer
    population = Population("sch", 25)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        **broker.env,
    )
    service = processes.add(
        ServiceProcess(dict(env, CRM_NOTIFY_SCHEDULER_INTERVAL="3600"), tmp_path / "serve.log")
    )
    processes.add(WorkerProcess(env, tmp_path / "worker.log"))
    marker = tmp_path / "stalled"
    stalling = dict(
        env, FAULT_STALL_POINT="fire", FAULT_STALL_AT="40", FAULT_STALL_MARKER=str(marker)
    )
    scheduler = processes.add(
        SchedulerProcess(stalling, tmp_path / "scheduler-1.log", command=INJECT)
    )
    calls = [population.identify(i) for i in range(population.size)]
    calls.append(population.identify_blocked())
    # One timestamp: the timers fall due at the same instant, so the first pass sees them all
    moment = utc(0)
    calls += [
        population.track(i, n, event="Fault Reminder", timestamp=moment)
        for n in range(4)
        for i in range(population.size)
    ]
    blocked = population.track("blocked", 0, event="Fault Reminder", timestamp=moment)
    calls.append(blocked)

    # When the shop's events make 101 timers due in 2 seconds, and the scheduler is killed
    # while firing them
    Client(key).send(service.url, calls)
    assert len(_timers(engine, "reminder")) == 101
    wait_until("the stall", marker.exists, timeout_s=60)
    scheduler.kill()

    # Then nothing of that pass was committed
    assert {status for _id, status, _key in _timers(engine, "reminder")} == {"pending"}
    assert [row for row in notifications(engine) if row.rule == "reminder"] == []

    # And another scheduler fires every timer once, and every reminder is sent once
    processes.add(SchedulerProcess(env, tmp_path / "scheduler-2.log"))
    wait_until(
        "every timer fired",
        lambda: "pending" not in {status for _i, status, _k in _timers(engine, "reminder")},
        timeout_s=60,
    )
    timers = _timers(engine, "reminder")
    fired = {f"timer:{timer_id}" for timer_id, status, _key in timers if status == "fired"}
    skipped = [timer_key for _id, status, timer_key in timers if status == "skipped"]
    assert len(fired) == 100
    assert skipped == [f"reminder:{blocked['messageId']}:0"]
    wait_until("every notification sent", all_sent(engine, 100), timeout_s=60)
    report = check_exactly_once(engine, smtp_sink, expected_keys=fired, population=population)
    print(f"\n{report.notifications} notifications, {report.messages} messages")
