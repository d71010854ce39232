"""``/metrics``: Prometheus's text format, parsed with prometheus_client's own parser, counting
what every process wrote to the database since the service started."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, col, select

from crm_notify.app import create_app
from crm_notify.events.schemas import parse_call
from crm_notify.metrics import reason_kind
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.runtime import Runtime
from tests.support.servers import SmtpSink, serve


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("rule matched", "rule matched"),
        ("quiet hours until 08:00 Europe/Warsaw", "quiet hours until"),
        ("no marketing consent recorded", "no marketing consent recorded"),
        ("limit 1 per 7 days reached, last sent 2026-11-16 12:00 UTC", "limit"),
        ("rejected by the gate: out of stock", "rejected by the gate"),
        ("already sent for dedupe key 'O1' (notification 5)", "already sent for dedupe key"),
        ("cancelled at delivery: suppressed ada@example.com", "cancelled at delivery"),
        ("", "other"),
    ],
)
def test_reason_kind_keeps_labels_bounded(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def _call(user: str) -> Any:
    moment = datetime.now(UTC)
    body = {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}}
    return parse_call({"timestamp": moment.isoformat(), **body}, type_hint=None, received_at=moment)


@pytest.fixture
def runtime(make_settings: Any, smtp_sink: SmtpSink) -> Iterator[Runtime]:
    built = Runtime.from_settings(make_settings(esp_url=smtp_sink.url, metrics_token="s3cret"))
    upgrade(built.engine)
    built.intake.ingest([_call("before-start")])  # written before the service started
    yield built
    built.close()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    values = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_count_events_decisions_sends_and_the_queue(runtime: Runtime) -> None:
    with serve(create_app(runtime.settings, runtime=runtime)) as url:
        # Given a scrape right after start: nothing counted yet (the earlier event is not)
        first = _scrape(url)
        assert first.get(("crm_notify_events_received_total", (("type", "identify"),))) is None
        assert first[("crm_notify_delivery_latency_seconds_count", ())] == 0
        # When two contacts sign up (the embedded broker delivers their welcome mails at once)
        # and the earlier contact's mail is waiting for a retry
        runtime.intake.ingest([_call("u1"), _call("u2")])
        with Session(runtime.engine) as session:
            waiting = session.exec(select(Notification).order_by(col(Notification.id))).first()
            assert waiting is not None
            waiting.status = NotificationStatus.RETRYING
            session.add(waiting)
            session.commit()
        values = _scrape(url)
        # Then the scrape counts them
        assert values[("crm_notify_events_received_total", (("type", "identify"),))] == 2
        decided = ("crm_notify_decisions_total", (("outcome", "send"), ("reason", "rule matched")))
        assert values[decided] == 2
        sent = (
            "crm_notify_sends_total",
            (("channel", "email"), ("esp", "smtp"), ("status", "sent")),
        )
        assert values[sent] == 2
        assert values[("crm_notify_queue_depth", (("status", "retrying"),))] == 1
        assert values[("crm_notify_queue_depth", (("status", "pending"),))] == 0
        assert values[("crm_notify_delivery_latency_seconds_count", ())] == 2
        assert values[("crm_notify_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 2
        # And a second scrape counts nothing twice
        assert _scrape(url)[decided] == 2
        # And without the token the metrics are refused
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer x"}).status_code == 401
