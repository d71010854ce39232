"""Lifecycle events (issue 8, first slice): crm-notify emits contact.subscribed/unsubscribed,
contact.profile_updated, contact.email_changed, contact.cleaned and notification.sent with
their source; the relay stores them with the other events (the contact's timeline) and rules
trigger on them like on any event, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.app import create_app
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.events.schemas import parse_call
from crm_notify.explain import explain_contact
from crm_notify.gdpr.erase import erase_contact
from crm_notify.guards.consent import record_consent
from crm_notify.guards.models import ConsentSource, SuppressionReason
from crm_notify.guards.suppression import suppress
from crm_notify.lifecycle.emit import answers_notification_event
from crm_notify.lifecycle.models import LifecycleEvent
from crm_notify.lifecycle.relay import LifecycleRelay
from crm_notify.migrations import upgrade
from crm_notify.outbox.models import Notification
from crm_notify.runtime import Runtime
from tests.conftest import ROOT
from tests.support.servers import SmtpSink, serve, write_tree
from tests.webhooks.test_postmark import CREDENTIALS as POSTMARK_CREDENTIALS
from tests.webhooks.test_postmark import bounce as postmark_bounce
from tests.webhooks.test_postmark import call as postmark_call
from tests.webhooks.test_postmark import record as postmark_record

RULES = {
    "goodbye.yaml": """
name: goodbye
trigger: {event: contact.unsubscribed}
when: event.properties.purpose == "marketing"
template: welcome
purpose: transactional
""",
    "thanks.yaml": """
name: thanks-for-reading
trigger: {event: notification.sent}
when: event.properties.rule == "goodbye"
template: welcome
purpose: transactional
""",
}


@pytest.fixture
def runtime(make_settings: Any, smtp_sink: SmtpSink, tmp_path: Path) -> Iterator[Runtime]:
    write_tree(tmp_path / "rules", RULES)
    settings = make_settings(
        esp_url=smtp_sink.url,
        rules_dir=tmp_path / "rules",
        templates_dir=ROOT / "templates",
        postmark_webhook_auth=POSTMARK_CREDENTIALS,
    )
    built = Runtime.from_settings(settings)
    upgrade(built.engine)
    yield built
    built.close()


def _identify(runtime: Runtime, **traits: Any) -> None:
    moment = datetime.now(UTC)
    body = {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com", **traits}}
    runtime.intake.ingest(
        [parse_call({"timestamp": moment.isoformat(), **body}, type_hint=None, received_at=moment)]
    )


def _contact_id(engine: Engine) -> int:
    with Session(engine) as session:
        event = session.exec(select(Event).where(Event.type == "identify")).first()
        assert event is not None and event.contact_id is not None
        return event.contact_id


def _lifecycle(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    with Session(engine) as session:
        rows = session.exec(
            select(Event).where(Event.source == "lifecycle").order_by(col(Event.id))
        ).all()
        return [(str(row.name), dict(row.payload.get("properties") or {})) for row in rows]


def test_changes_become_lifecycle_events_with_their_source(runtime: Runtime) -> None:
    engine = runtime.engine
    # Given a contact who signs up, then changes their name and address
    _identify(runtime, first_name="Ada")
    contact_id = _contact_id(engine)
    _identify(runtime, first_name="Ada", last_name="Lovelace")
    moment = datetime.now(UTC)
    change = {"type": "identify", "userId": "u1", "traits": {"email": "ada@lovelace.example"}}
    runtime.intake.ingest(
        [
            parse_call(
                {"timestamp": moment.isoformat(), **change}, type_hint=None, received_at=moment
            )
        ]
    )
    # And consents through the API, unsubscribes by link, and later bounces hard
    with session_scope(engine) as session:
        for granted, source in ((True, ConsentSource.API), (False, ConsentSource.UNSUBSCRIBE_LINK)):
            record_consent(
                session=session,
                contact_id=contact_id,
                purpose="marketing",
                granted=granted,
                source=source,
            )
        # a repeated withdrawal changes nothing, so it emits nothing
        record_consent(
            session=session,
            contact_id=contact_id,
            purpose="marketing",
            granted=False,
            source=ConsentSource.ADMIN,
        )
        suppress(
            session=session,
            email="ada@lovelace.example",
            reason=SuppressionReason.HARD_BOUNCE,
            created_by="esp-webhook",
        )
    # When the relay runs
    runtime.lifecycle.run_once()
    # Then each change is an event of the contact, with its source, in order
    events = _lifecycle(engine)
    names = [name for name, _ in events]
    assert names == [
        "contact.profile_updated",
        "contact.email_changed",  # (the email is not a trait: no profile_updated with it)
        "contact.subscribed",
        "contact.unsubscribed",
        "contact.cleaned",
    ]
    props = dict(events)
    assert props["contact.email_changed"] == {
        "old_email": "ada@example.com",
        "new_email": "ada@lovelace.example",
        "source": "api",
    }
    assert events[0][1] == {"changed": ["last_name"], "source": "api"}
    assert props["contact.subscribed"] == {"purpose": "marketing", "source": "api"}
    assert events[3][1] == {"purpose": "marketing", "source": "contact"}
    assert events[4][1] == {"reason": "hard_bounce", "source": "system"}
    # And the outbox is empty; running again adds nothing
    with Session(engine) as session:
        assert session.exec(select(LifecycleEvent)).all() == []
    runtime.lifecycle.run_once()
    assert len(_lifecycle(engine)) == len(events)
    # And the contact's timeline shows them
    with Session(engine) as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        timeline = explain_contact(session=session, contact=contact)
    shown = [entry.event.name for entry in timeline.entries if entry.event]
    assert "contact.unsubscribed" in shown and "contact.cleaned" in shown


def test_rules_trigger_on_lifecycle_events_without_feeding_themselves(runtime: Runtime) -> None:
    engine = runtime.engine
    _identify(runtime)
    contact_id = _contact_id(engine)
    _grant_then_withdraw(engine, contact_id)
    # When the relay ingests the unsubscribe (the goodbye mail is sent at once by the embedded
    # broker), and then what that send emitted
    runtime.lifecycle.run_once()
    runtime.lifecycle.run_once()
    # Then the goodbye rule sent its mail once, and the rule listening to sends reacted to it
    # once, but its own mail emitted no notification.sent that could trigger it again
    with Session(engine) as session:
        rules = [
            row.rule for row in session.exec(select(Notification).order_by(col(Notification.id)))
        ]
    assert rules == ["goodbye", "thanks-for-reading"]


def test_erasing_a_contact_removes_their_pending_lifecycle_events(runtime: Runtime) -> None:
    engine = runtime.engine
    _identify(runtime, first_name="Ada")
    _identify(runtime, first_name="Augusta")  # a profile update, not ingested yet
    contact_id = _contact_id(engine)
    with Session(engine) as session:
        assert len(session.exec(select(LifecycleEvent)).all()) == 1
    with session_scope(engine) as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        erase_contact(session=session, contact=contact, actor="test")
    with Session(engine) as session:
        assert session.exec(select(LifecycleEvent)).all() == []
    assert runtime.lifecycle.run_once() == 0


def test_tracking_reports_become_delivered_and_bounced_events(runtime: Runtime) -> None:
    engine = runtime.engine
    _identify(runtime)
    contact_id = _contact_id(engine)
    _grant_then_withdraw(engine, contact_id)
    runtime.lifecycle.run_once()  # the goodbye mail is decided and sent
    with Session(engine) as session:
        goodbye = session.exec(select(Notification).where(Notification.rule == "goodbye")).one()
    # When the provider reports it delivered, then bounced, through its real webhook over HTTP
    records = [
        postmark_record("Delivery", recipient="ada@example.com", notification_id=goodbye.id),
        postmark_bounce(
            "SoftBounce",
            4001,
            recipient="ada@example.com",
            notification_id=goodbye.id,
            message_id="a2f5e2b0-0c7b-4a43-9a53-9a0d1e7f3c11",
        ),
    ]
    with serve(create_app(runtime.settings, runtime=runtime)) as url:
        for record in records:
            body, headers = postmark_call(record)
            answer = httpx.post(f"{url}/v1/webhooks/esp/postmark", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
    runtime.lifecycle.run_once()
    events = _lifecycle(engine)
    reported = {name: props for name, props in events if name.startswith("notification.")}
    assert reported["notification.delivered"] == {
        "notification_id": goodbye.id,
        "rule": "goodbye",
        "template": "welcome",
        "channel": "email",
        "esp": "postmark",
        "source": "system",
    }
    assert reported["notification.bounced"]["bounce"] == "soft"


def _grant_then_withdraw(engine: Engine, contact_id: int) -> None:
    with session_scope(engine) as session:
        for granted in (True, False):
            record_consent(
                session=session,
                contact_id=contact_id,
                purpose="marketing",
                granted=granted,
                source=ConsentSource.PREFERENCE_PAGE,
            )


def test_a_withdrawal_without_a_grant_announces_nothing(runtime: Runtime) -> None:
    _identify(runtime)
    with session_scope(runtime.engine) as session:
        record_consent(
            session=session,
            contact_id=_contact_id(runtime.engine),
            purpose="marketing",
            granted=False,
            source=ConsentSource.SEGMENT,
        )
    runtime.lifecycle.run_once()
    assert _lifecycle(runtime.engine) == []


def test_events_after_an_emptied_outbox_are_not_mistaken_for_repeats(runtime: Runtime) -> None:
    # SQLite reuses row ids once the table is empty: the messageId must not
    engine = runtime.engine
    _identify(runtime, first_name="A")
    for name in ("B", "C", "D"):
        _identify(runtime, first_name=name)
        assert runtime.lifecycle.run_once() == 1
    assert [name for name, _ in _lifecycle(engine)] == ["contact.profile_updated"] * 3


def test_an_erasure_during_ingestion_stores_nothing_of_the_person(runtime: Runtime) -> None:
    engine = runtime.engine
    _identify(runtime, first_name="Ada")
    _identify(runtime, first_name="Augusta")
    contact_id = _contact_id(engine)
    real = runtime.intake.ingest

    def erase_first(*args: Any, **kwargs: Any) -> Any:
        # the erasure commits after the relay read the rows, before it ingests them
        with session_scope(engine) as session:
            contact = session.get(Contact, contact_id)
            assert contact is not None
            erase_contact(session=session, contact=contact, actor="test")
        return real(*args, **kwargs)

    relay = LifecycleRelay(engine=engine, ingest=erase_first, interval_s=1)
    relay.run_once()
    assert _lifecycle(engine) == []
    with Session(engine) as session:
        assert session.exec(select(Event).where(Event.user_id == "u1")).all() == []


def test_a_digest_that_holds_a_notification_event_emits_nothing() -> None:
    assert answers_notification_event({"event": {"event": "notification.sent"}})
    digest = {"digest": {"items": [{"event": {"event": "notification.delivered"}}]}}
    assert answers_notification_event(digest)
    assert not answers_notification_event({"event": {"event": "Order Completed"}})
    assert not answers_notification_event(None)
