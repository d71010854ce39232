"""``crm-notify outbox list|retry``: see what delivery gave up on, and replay it.

Delivery goes through the real SendGrid adapter to an HTTP stand-in on loopback; the database
is SQLite or PostgreSQL; the Redis case uses a real Redis and a Dramatiq worker.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import click
import dramatiq
import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.cli import main
from crm_notify.commands.outbox import outbox
from crm_notify.config import Settings
from crm_notify.guards.suppression import suppress
from crm_notify.outbox.models import Notification
from crm_notify.runtime import Runtime
from tests.esp._api_server import Answer, ApiServer
from tests.outbox._outbox_support import (
    add_notification,
    deliver_until_done,
    history,
    message_ids,
    row,
    sendgrid_settings,
)
from tests.support.brokers import SharedBroker

START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DOWN = Answer(500, json={"errors": [{"message": "internal"}]})


@dataclass
class Obj:
    """What the root ``crm-notify`` group hands its commands."""

    settings: Settings


def invoke(command: click.Command, settings: Settings, *args: str) -> Result:
    """Run ``command`` as ``crm-notify`` would, with ``settings``."""
    return CliRunner().invoke(command, list(args), obj=Obj(settings), catch_exceptions=False)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    """A SendGrid stand-in, down (500) until a test says otherwise."""
    with ApiServer(default=DOWN) as server:
        yield server


@dataclass
class Setup:
    settings: Settings
    runtime: Runtime

    @property
    def engine(self) -> Engine:
        return self.runtime.engine


@pytest.fixture
def setup(make_settings: Callable[..., Settings], api: ApiServer) -> Iterator[Setup]:
    """Settings (max age 10m) pointing at ``api``, and a runtime to deliver with."""
    settings = sendgrid_settings(make_settings, api, delivery_max_age="10m")
    runtime = Runtime.from_settings(settings)
    yield Setup(settings, runtime)
    runtime.close()


def dead_letter(setup: Setup, key: str = "k1", email: str = "alice@example.com") -> int:
    """A notification retried against the failing ESP until it is dead-lettered; its id."""
    nid = add_notification(setup.engine, key=key, email=email)
    with freeze_time(START) as clock:
        outcomes = deliver_until_done(setup.runtime.delivery, nid, clock)
    assert outcomes[-1] == "failed"
    return nid


def cancelled(setup: Setup, key: str = "k9", email: str = "bob@example.com") -> int:
    """A notification cancelled at delivery (its address was suppressed); its id."""
    nid = add_notification(setup.engine, key=key, email=email)
    with Session(setup.engine) as session:
        suppress(session=session, email=email, reason="complaint", created_by="test")
        session.commit()
    assert setup.runtime.delivery.deliver(nid).status == "cancelled"
    return nid


def set_status(engine: Engine, nid: int, **values: object) -> None:
    with Session(engine) as session:
        found = session.get(Notification, nid)
        assert found is not None
        for name, value in values.items():
            setattr(found, name, value)
        session.add(found)
        session.commit()


# --- retry ----------------------------------------------------------------------------------


def test_a_dead_lettered_notification_is_replayed_once_with_the_same_message_id(
    setup: Setup, api: ApiServer
) -> None:
    # Given a notification dead-lettered after the ESP failed for longer than the max age
    nid = dead_letter(setup)
    failures = len(api.requests)
    assert failures > 3 and row(setup.engine, nid).status == "failed"
    (failed_with,) = set(message_ids(api))
    # When the ESP recovers and support replays every failed notification
    api.default = Answer(202, headers={"X-Message-Id": "sg-replayed"})
    result = invoke(outbox, setup.settings, "retry", "--all")
    # Then it was delivered right away (embedded broker), once, as rendered the first time
    assert result.exit_code == 0, result.output
    assert result.output == "replayed 1 notification: 1 sent\n"
    assert len(api.requests) == failures + 1
    assert message_ids(api)[-1] == failed_with
    stored = row(setup.engine, nid)
    assert (stored.status, stored.attempts, stored.esp_message_id) == ("sent", 1, "sg-replayed")
    assert stored.message_id == failed_with and stored.last_error is None
    assert stored.first_attempt_at is not None and stored.first_attempt_at > START
    # And the history says who replayed it, between the dead letter and the new send
    statuses = history(setup.engine, nid)
    assert statuses[-4][0] == "failed" and statuses[-4][1].startswith("dead-lettered after")
    assert statuses[-3:] == [
        ("pending", f"replayed by {getpass.getuser()}"),
        ("sending", None),
        ("sent", "accepted by sendgrid"),
    ]
    # And replaying again finds nothing to do and sends nothing
    again = invoke(outbox, setup.settings, "retry", "--all")
    assert (again.exit_code, again.output) == (0, "no failed notifications to replay\n")
    assert len(api.requests) == failures + 1


def test_replay_by_id_and_by_rule(setup: Setup, api: ApiServer) -> None:
    # Given three dead-lettered notifications, one of another rule
    first = dead_letter(setup, key="a")
    second = dead_letter(setup, key="b")
    other = dead_letter(setup, key="c")
    set_status(setup.engine, other, rule="welcome")
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    # When one is replayed by id
    by_id = invoke(outbox, setup.settings, "retry", str(first))
    assert by_id.output == "replayed 1 notification: 1 sent\n"
    # And then the failed ones of one rule
    by_rule = invoke(outbox, setup.settings, "retry", "--all", "--rule", "order-shipped")
    assert by_rule.output == "replayed 1 notification: 1 sent\n"
    # Then those were sent, and the other rule's is still failed
    assert [row(setup.engine, n).status for n in (first, second, other)] == [
        "sent",
        "sent",
        "failed",
    ]
    nothing = invoke(outbox, setup.settings, "retry", "--all", "--rule", "order-shipped")
    assert nothing.output == "no failed notifications of rule 'order-shipped' to replay\n"


def test_a_cancelled_notification_is_never_replayed(setup: Setup, api: ApiServer) -> None:
    # Given a notification cancelled at delivery (suppressed address), and a failed one
    refused = cancelled(setup)
    failed = dead_letter(setup)
    before = history(setup.engine, refused)
    requests = len(api.requests)
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    # When support tries to replay the cancelled one
    result = invoke(outbox, setup.settings, "retry", str(refused))
    # Then it is refused, naming the id and why, and nothing changes
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: notification {refused} is cancelled: consent or suppression refused it, and "
        "cancelled notifications are never replayed. Nothing was replayed.\n"
    )
    assert row(setup.engine, refused).status == "cancelled"
    assert history(setup.engine, refused) == before
    # When it is named together with a failed one (and one that does not exist)
    mixed = invoke(outbox, setup.settings, "retry", str(failed), str(refused), "999")
    # Then nothing is replayed, not even the failed one
    assert mixed.exit_code == 1
    assert f"notification {refused} is cancelled" in mixed.stderr
    assert "there is no notification 999" in mixed.stderr
    assert mixed.stderr.endswith("Nothing was replayed.\n")
    assert row(setup.engine, failed).status == "failed"
    # And --all passes over cancelled ones
    everything = invoke(outbox, setup.settings, "retry", "--all")
    assert everything.output == "replayed 1 notification: 1 sent\n"
    assert row(setup.engine, refused).status == "cancelled"
    assert len(api.requests) == requests + 1


def test_a_sent_notification_is_refused(setup: Setup, api: ApiServer) -> None:
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    nid = add_notification(setup.engine)
    assert setup.runtime.delivery.deliver(nid).status == "sent"
    result = invoke(outbox, setup.settings, "retry", str(nid))
    assert result.exit_code == 1
    assert f"notification {nid} is sent: only failed notifications can be replayed" in (
        result.stderr
    )
    assert len(api.requests) == 1


def test_the_guards_run_again_so_a_replay_can_still_be_cancelled(
    setup: Setup, api: ApiServer
) -> None:
    # Given a dead-lettered notification whose address was suppressed since
    nid = dead_letter(setup)
    requests = len(api.requests)
    with Session(setup.engine) as session:
        suppress(session=session, email="alice@example.com", reason="manual", created_by="t")
        session.commit()
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    # When it is replayed
    result = invoke(outbox, setup.settings, "retry", str(nid))
    # Then delivery cancels it and the ESP gets nothing
    assert result.output == "replayed 1 notification: 1 cancelled\n"
    assert row(setup.engine, nid).status == "cancelled"
    assert len(api.requests) == requests


def test_with_a_broker_a_replay_is_queued_for_the_workers(
    make_settings: Callable[..., Settings], api: ApiServer, broker: SharedBroker
) -> None:
    # Given a broker (Redis, RabbitMQ) and a dead-lettered notification
    settings = sendgrid_settings(make_settings, api, delivery_max_age="10m", **broker.settings)
    runtime = Runtime.from_settings(settings)
    try:
        nid = dead_letter(Setup(settings, runtime))
        api.default = Answer(202, headers={"X-Message-Id": "sg-worker"})
        requests = len(api.requests)
        # When it is replayed
        result = invoke(outbox, settings, "retry", str(nid))
        # Then it is queued, not sent by the command
        assert result.output == "replayed 1 notification: 1 queued\n"
        assert len(api.requests) == requests
        # And a worker delivers it
        worker = dramatiq.Worker(runtime.broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while row(runtime.engine, nid).status != "sent":
                assert time.monotonic() < deadline, "the worker did not deliver the replay"
                time.sleep(0.05)
        finally:
            worker.stop()
        assert len(api.requests) == requests + 1
    finally:
        runtime.close()


def test_retry_needs_ids_or_all(setup: Setup) -> None:
    neither = invoke(outbox, setup.settings, "retry")
    both = invoke(outbox, setup.settings, "retry", "1", "--all")
    rule_alone = invoke(outbox, setup.settings, "retry", "1", "--rule", "x")
    for result in (neither, both):
        assert result.exit_code == 2 and "give notification IDs or --all" in result.stderr
    assert rule_alone.exit_code == 2 and "--rule goes with --all" in rule_alone.stderr


# --- list -----------------------------------------------------------------------------------


def test_list_shows_a_table_without_addresses_and_json_with_them(
    setup: Setup, api: ApiServer
) -> None:
    # Given a dead-lettered notification whose error names the address, and a sent one
    failed = dead_letter(setup)
    set_status(setup.engine, failed, last_error="smtp: 550 5.1.1 <alice@example.com> unknown\nuser")
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    sent = add_notification(setup.engine, key="k2", email="carol@example.com")
    assert setup.runtime.delivery.deliver(sent).status == "sent"
    # When listed
    result = invoke(outbox, setup.settings, "list")
    # Then a table, newest change first, with contact ids and no address anywhere
    assert result.exit_code == 0
    header, *lines = result.output.splitlines()
    assert header.split() == [
        "ID",
        "RULE",
        "CHANNEL",
        "STATUS",
        "ATTEMPTS",
        "ESP",
        "CONTACT",
        "UPDATED",
        "(UTC)",
        "LAST",
        "ERROR",
    ]
    assert [line.split()[0] for line in lines] == [str(sent), str(failed)]
    assert "@" not in result.output
    sent_cells = lines[0].split()
    assert sent_cells[1:6] == ["order-shipped", "email", "sent", "1", "sendgrid"]
    failed_line = lines[1]
    assert "failed" in failed_line
    assert failed_line.endswith("smtp: 550 5.1.1 <<address>> unknown user")
    # When filtered by status
    only_failed = invoke(outbox, setup.settings, "list", "--status", "failed").output
    assert [line.split()[0] for line in only_failed.splitlines()[1:]] == [str(failed)]
    # And as JSON: full rows, with the address, without the rendered message
    rows = json.loads(invoke(outbox, setup.settings, "list", "--json").output)
    assert [r["id"] for r in rows] == [sent, failed]
    assert rows[1]["to_address"] == "alice@example.com"
    assert rows[1]["status"] == "failed"
    assert rows[1]["last_error"] == "smtp: 550 5.1.1 <alice@example.com> unknown\nuser"
    assert rows[0]["esp_message_id"] == "sg-ok" and rows[0]["sent_at"].endswith("+00:00")
    assert "message" not in rows[0] and "context" not in rows[0]
    assert rows[0]["message_id"].startswith("<")


def test_list_filters_by_rule_and_since(setup: Setup, api: ApiServer) -> None:
    api.default = Answer(202, headers={"X-Message-Id": "sg-ok"})
    old = add_notification(setup.engine, key="old")
    new = add_notification(setup.engine, key="new", email="dan@example.com")
    set_status(setup.engine, old, updated_at=datetime(2026, 1, 1, tzinfo=UTC), rule="welcome")
    assert (
        invoke(outbox, setup.settings, "list", "--rule", "welcome")
        .output.splitlines()[1]
        .startswith(f"{old} ")
    )
    recent = invoke(outbox, setup.settings, "list", "--since", "2026-06-01").output
    assert [line.split()[0] for line in recent.splitlines()[1:]] == [str(new)]
    limited = invoke(outbox, setup.settings, "list", "--limit", "1").output
    assert len(limited.splitlines()) == 2
    none = invoke(outbox, setup.settings, "list", "--rule", "nope")
    assert (none.stdout, none.stderr) == ("", "no notifications match\n")
    bad = invoke(outbox, setup.settings, "list", "--since", "last tuesday")
    assert bad.exit_code == 2 and "--since" in bad.stderr
    assert "not a duration" in bad.stderr


def test_the_group_is_registered_with_examples(setup: Setup) -> None:
    result = CliRunner().invoke(main, ["outbox", "--help"])
    assert result.exit_code == 0
    assert "crm-notify outbox list --status failed" in result.output
    assert "CRM_NOTIFY_DELIVERY_MAX_AGE" in result.output
    listed = CliRunner().invoke(main, ["--help"]).output
    assert "outbox" in listed
