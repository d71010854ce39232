"""Fault injection: the ESP (a SendGrid API stand-in on loopback) answers 500, 429 and too
slowly for a while, then recovers (embedded default: ``crm-notify serve`` delivers)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.esp._api_server import Answer, ApiServer, RecordedRequest
from tests.faults._harness import (
    Client,
    Population,
    Received,
    all_sent,
    check_exactly_once,
    fault_env,
    set_up_database,
    wait_until,
)
from tests.faults.conftest import Processes, one_database
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.faults

#: Seconds crm-notify waits for the stand-in's answer (``?timeout=`` of the ESP URL).
CLIENT_TIMEOUT_S = 1.0
#: Seconds the stand-in holds a "too slow" answer: past the client's timeout.
SLOW_ANSWER_S = 2.0


class FlakySendGrid:
    """Answers SendGrid's Mail Send in turn with 500, 429 (Retry-After: 1) and an answer
    that comes after the client gave up (a 503: the message was not taken) while ``failing``
    is set; afterwards accepts every message (202 and an ``X-Message-Id``).

    A message counts as accepted only when answered 2xx: ``accepted`` lists them.
    """

    def __init__(self) -> None:
        self.failing = True
        self.accepted: list[Received] = []
        self.refused: dict[int, int] = {}
        self.failures: Counter[str] = Counter()
        self.message_ids: dict[int, str] = {}
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, request: RecordedRequest) -> Answer:
        body = request.json
        notification_id = int(body["custom_args"]["crm_notify_id"])
        with self._lock:
            self._count += 1
            if self.failing:
                self.refused[notification_id] = self.refused.get(notification_id, 0) + 1
                kind = ("500", "429", "slow")[self._count % 3]
                self.failures[kind] += 1
                error = {"errors": [{"message": "try later", "field": None}]}
                if kind == "500":
                    return Answer(500, json=error)
                if kind == "429":
                    return Answer(429, json=error, headers={"Retry-After": "1"})
                return Answer(503, json=error, delay_s=SLOW_ANSWER_S)
            esp_id = f"sg-{self._count}"
            self.message_ids[notification_id] = esp_id
            self.accepted.append(
                Received(
                    notification_id,
                    [to["email"] for to in body["personalizations"][0]["to"]],
                    body["headers"].get("Message-ID"),
                )
            )
        return Answer(202, headers={"X-Message-Id": esp_id})


@pytest.fixture
def flaky_sendgrid() -> Iterator[tuple[FlakySendGrid, ApiServer]]:
    esp = FlakySendGrid()
    with ApiServer(check=esp) as server:
        yield esp, server


@one_database
def test_esp_failing_for_a_while_then_recovering_delivers_each_message_once(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    flaky_sendgrid: tuple[FlakySendGrid, ApiServer],
    processes: Processes,
) -> None:
    """Every first attempt fails (500, 429 with Retry-After, or no answer within the client's
    timeout); once every notification has failed at least once the ESP recovers.

    Each notification is retried with backoff (5 to 10 seconds after the first failure) and
    accepted exactly once, its stored Message-ID and the ESP's message id recorded. A "too
    slow" answer here is a refusal that comes late; had the provider taken that message, the
    retry would repeat it with the same Message-ID (the failover docs: it is retried only at
    that provider).
    """
    # Given the embedded service sending through a SendGrid stand-in that fails for now
    esp, server = flaky_sendgrid
    population = Population("esp", 20)
    key = set_up_database(engine, population)
    env = fault_env(
        tmp_path,
        database_url=database_url,
        esp_url=f"sendgrid://SG.key@{server.netloc}?insecure=1&timeout={CLIENT_TIMEOUT_S:g}",
    )
    service = processes.add(ServiceProcess(env, tmp_path / "serve.log"))
    calls = population.identify_then_order_once()
    expected = population.expected_keys(calls)

    # When the shop's events arrive while the ESP fails, and it recovers after each
    # notification failed once
    Client(key).send(service.url, calls)
    wait_until(
        "every notification refused once", lambda: len(esp.refused) == len(expected), timeout_s=60
    )
    esp.failing = False
    recovered_at = time.monotonic()

    # Then each is delivered exactly once, after its retry
    wait_until("every notification sent", all_sent(engine, len(expected)), timeout_s=90)
    delivered_s = time.monotonic() - recovered_at
    report = check_exactly_once(
        engine, lambda: list(esp.accepted), expected_keys=expected, population=population
    )
    assert set(esp.failures) == {"500", "429", "slow"}
    assert min(report.attempts) >= 2
    with engine.connect() as connection:
        stored: dict[int, str] = dict(
            connection.execute(sa.text("SELECT id, esp_message_id FROM notification")).all()
        )
    assert stored == esp.message_ids
    print(
        f"\n{report.notifications} notifications; refusals {dict(esp.failures)}; attempts "
        f"{dict(report.attempts)}; all sent {delivered_s:.1f}s after the ESP recovered"
    )
