"""Fault injection: three schedulers (two standalone ones and the API's) and two worker
processes racing on the same due timers and the same per-contact caps (Redis and RabbitMQ
brokers, SMTP sink)."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import timedelta
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
    set_up_database,
    utc,
    wait_until,
)
from tests.faults.conftest import Processes
from tests.support.brokers import SharedBroker
from tests.support.servers import SmtpSink
from tests.support.service import SchedulerProcess, ServiceProcess, WorkerProcess

pytestmark = pytest.mark.faults

#: Runs ``crm-notify`` tracing which process fires which timer (see the module).
INJECT = (sys.executable, str(Path(__file__).parent / "_inject.py"))


def _timers(engine: Engine) -> list[tuple[int, str, str, str]]:
    """(id, rule, status, user id) of every timer."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT timer.id, timer.rule, timer.status, contact.user_id FROM timer "
                "JOIN contact ON contact.id = timer.contact_id ORDER BY timer.id"
            )
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows]


def test_racing_schedulers_fire_each_timer_once_and_keep_the_caps(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    broker: SharedBroker,
    smtp_sink: SmtpSink,
    processes: Processes,
) -> None:
    """40 contacts each get two delayed reminders and three delayed offers capped at one per
    day; the timers fall due over three seconds, a contact's three offers about 170 ms apart,
    while three schedulers pass every half second (so a contact's offers are fired by
    different schedulers, some at the same moment) and two worker processes deliver.

    Every timer fires once (``fired``, or ``skipped`` by a guard); every reminder is sent once;
    each contact with marketing consent gets exactly one offer and the others none.
    """
    # Given the API's scheduler, two more, and two worker processes, all on the same database
    population = Population("race", 40)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=smtp_sink.url,
        **broker.env,
    )
    trace = tmp_path / "fires"
    traced = dict(env, FAULT_TRACE=str(trace))
    service = processes.add(ServiceProcess(traced, tmp_path / "serve.log", command=INJECT))
    schedulers = [
        processes.add(SchedulerProcess(traced, tmp_path / f"scheduler-{n}.log", command=INJECT))
        for n in (1, 2)
    ]
    processes.add(WorkerProcess(env, tmp_path / "worker.log", processes=2))
    calls = [population.identify(i) for i in range(population.size)]
    calls.append(population.identify_blocked())
    client = Client(key)
    client.send(service.url, calls)
    for scheduler in schedulers:
        scheduler.wait_ready()

    # When the events that set the timers arrive (each due 2 s after its timestamp)
    start = utc(1.6)
    events = []
    for i in range(population.size):
        base = start + timedelta(seconds=0.06 * i)
        events += [
            population.track(
                i, n, event="Fault Reminder", timestamp=base + timedelta(seconds=0.2 * n)
            )
            for n in range(2)
        ]
        events += [
            population.track(
                i, n, event="Fault Offer", timestamp=base + timedelta(seconds=0.17 * n)
            )
            for n in range(3)
        ]
    client.send(service.url, events)

    # Then every timer fires once, and the cap holds for every contact
    wait_until(
        "every timer done",
        lambda: {status for _i, _r, status, _u in _timers(engine)} <= {"fired", "skipped"},
        timeout_s=60,
    )
    timers = _timers(engine)
    assert len(timers) == 200
    offers = Counter((user, status) for _i, rule, status, user in timers if rule == "capped-offer")
    for i in range(population.size):
        user = f"{population.prefix}-{i}"
        fired = 1 if population.consented(i) else 0
        assert (offers[(user, "fired")], offers[(user, "skipped")]) == (fired, 3 - fired), user
    reminders = {status for _i, rule, status, _u in timers if rule == "reminder"}
    assert reminders == {"fired"}
    expected = {f"timer:{timer_id}" for timer_id, _r, status, _u in timers if status == "fired"}
    assert len(expected) == 80 + 14
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=60)
    report = check_exactly_once(engine, smtp_sink, expected_keys=expected, population=population)
    # And the race took place: timers were fired by several schedulers, and some contacts'
    # capped offers by more than one
    fired_by = dict(line.split()[::-1] for line in trace.read_text().splitlines())
    by_scheduler = Counter(fired_by.values())
    offer_schedulers = Counter(
        len({fired_by[str(t)] for t, rule, _s, u in timers if u == user and rule == "capped-offer"})
        for user in {u for _t, _r, _s, u in timers}
    )
    assert len(by_scheduler) >= 2 and max(offer_schedulers) >= 2
    print(
        f"\n{report.notifications} notifications, {report.messages} messages; timers per "
        f"scheduler {sorted(by_scheduler.values())}; contacts by schedulers firing their "
        f"offers {dict(offer_schedulers)}"
    )
