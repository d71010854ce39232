"""Shared pieces of the tracking-webhook tests: a server, rows to link to, and a contract.

:class:`WebhookContract` holds the tests every provider's webhook must pass (as anymail's
tests/webhook_cases.py does); a provider's test module subclasses it and fills the hooks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.config import Settings
from crm_notify.contacts.models import Contact
from crm_notify.guards.models import ConsentRecord, Suppression
from crm_notify.outbox.models import Notification, NotificationStatus, NotificationStatusChange
from crm_notify.render import RenderedMessage, build_message
from crm_notify.webhooks.models import TrackingEventRecord

#: The kinds of event :meth:`WebhookContract.event` must be able to build.
KINDS = ("delivered", "hard_bounce", "complaint", "unsubscribe", "unknown")


@dataclass
class WebhookServer:
    """The tracking-webhook app running on loopback."""

    url: str
    settings: Settings
    engine: Engine

    def post(self, name: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """``POST /v1/webhooks/esp/{name}`` with ``body`` as it is."""
        return httpx.post(
            f"{self.url}/v1/webhooks/esp/{name}", content=body, headers=headers or {}, timeout=10
        )


@dataclass(frozen=True)
class Sent:
    """A notification row the tests' events are about."""

    id: int
    contact_id: int | None
    to_address: str
    esp_message_id: str | None


def add_notification(
    engine: Engine,
    *,
    to_address: str,
    esp: str,
    esp_message_id: str | None,
    purpose: str = "marketing",
    with_contact: bool = True,
) -> Sent:
    """A notification in status ``sent`` through ``esp`` (and its contact, when asked)."""
    with Session(engine) as session:
        contact_id = None
        if with_contact:
            contact = session.exec(select(Contact).where(Contact.email == to_address)).first()
            if contact is None:
                contact = Contact(email=to_address, user_id=f"u-{uuid.uuid4().hex[:8]}")
                session.add(contact)
                session.flush()
            contact_id = contact.id
        row = Notification(
            idempotency_key=uuid.uuid4().hex,
            rule="order_shipped",
            template="order_shipped",
            purpose=purpose,
            contact_id=contact_id,
            to_address=to_address,
            status=NotificationStatus.SENT,
            esp=esp,
            esp_message_id=esp_message_id,
        )
        session.add(row)
        session.commit()
        assert row.id is not None
        return Sent(row.id, contact_id, to_address, esp_message_id)


def store_message_id(engine: Engine, sent: Sent, esp_message_id: str | None) -> Sent:
    """Record the id an adapter answered, as the delivery does after a send."""
    with Session(engine) as session:
        row = session.get(Notification, sent.id)
        assert row is not None
        row.esp_message_id = esp_message_id
        session.add(row)
        session.commit()
    return Sent(sent.id, sent.contact_id, sent.to_address, esp_message_id)


def outgoing_message(sent: Sent) -> EmailMessage:
    """The message the delivery would hand the adapter for ``sent`` (our id in its headers), to
    check that what an adapter sends along is what its webhook reads back."""
    rendered = RenderedMessage(
        template="order_shipped", language="en", subject="Shipped", html="<p>Hi</p>", text="Hi"
    )
    return build_message(
        rendered,
        from_address="shop@example.com",
        to_address=sent.to_address,
        message_id=f"<n{sent.id}@example.com>",
        extra_headers={"X-CRM-Notify-Id": str(sent.id), "X-CRM-Notify-Rule": "order_shipped"},
    )


def stored_events(engine: Engine) -> list[TrackingEventRecord]:
    """Every stored tracking event, oldest first."""
    with Session(engine) as session:
        return list(
            session.exec(select(TrackingEventRecord).order_by(TrackingEventRecord.id)).all()  # type: ignore[arg-type]
        )


def suppressions(engine: Engine) -> list[Suppression]:
    """Every suppression entry."""
    with Session(engine) as session:
        return list(session.exec(select(Suppression)).all())


def consent_records(engine: Engine) -> list[ConsentRecord]:
    """Every consent record."""
    with Session(engine) as session:
        return list(session.exec(select(ConsentRecord)).all())


def history(engine: Engine, notification_id: int) -> list[NotificationStatusChange]:
    """The status history of one notification, oldest first."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(NotificationStatusChange)
                .where(NotificationStatusChange.notification_id == notification_id)
                .order_by(NotificationStatusChange.id)  # type: ignore[arg-type]
            ).all()
        )


class WebhookContract:
    """Tests every provider's tracking webhook must pass.

    Subclass as ``class TestAcmeContract(WebhookContract)`` and fill in the hooks below; the
    tests run against a real server for every database of the ``engine`` fixture.
    """

    #: The webhook's name in ``/v1/webhooks/esp/<name>`` (the provider).
    provider = ""

    def settings(self) -> dict[str, object]:
        """Setting overrides that configure this provider's webhook."""
        raise NotImplementedError

    def stored_message_id(self, n: int) -> str:
        """The ``n``-th message id, in the form the adapter stores in ``esp_message_id``."""
        return f"crm-test-{n}-{uuid.uuid4().hex[:12]}"

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        """One provider event of ``kind`` (one of :data:`KINDS`) about ``message_id`` (in the
        stored form: build the provider's wire form from it) sent to ``recipient``, echoing
        ``notification_id`` in the metadata when it is not ``None``."""
        raise NotImplementedError

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        """An authentic call carrying ``events``: body and headers."""
        raise NotImplementedError

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        """The call without any credentials or signature (answered 401)."""
        raise NotImplementedError

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        """The call with wrong credentials or a wrong signature (answered 403)."""
        raise NotImplementedError

    # The contract.

    @pytest.fixture
    def server(self, webhook_server: Any) -> WebhookServer:
        server: WebhookServer = webhook_server(**self.settings())
        return server

    def send(self, server: WebhookServer, events: list[Any]) -> httpx.Response:
        body, headers = self.request(events)
        return server.post(self.provider, body, headers)

    def _one(self, engine: Engine, kind: str, *, link_by_id: bool = False) -> tuple[Sent, Any]:
        sent = add_notification(
            engine,
            to_address="alice@example.com",
            esp=self.provider,
            esp_message_id=self.stored_message_id(1),
        )
        assert sent.esp_message_id is not None
        event = self.event(
            kind,
            recipient=sent.to_address,
            message_id=self.stored_message_id(2) if link_by_id else sent.esp_message_id,
            notification_id=sent.id if link_by_id else None,
        )
        return sent, event

    def test_contract_delivered_is_linked_by_message_id(
        self, server: WebhookServer, engine: Engine
    ) -> None:
        # Given a sent notification and the provider's "delivered" event for its message id
        sent, event = self._one(engine, "delivered")
        # When the provider posts it
        answer = self.send(server, [event])
        # Then it is stored, linked to the notification, and in its history
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 0}
        [row] = stored_events(engine)
        assert (row.event_type, row.notification_id, row.esp) == (
            "delivered",
            sent.id,
            self.provider,
        )
        assert row.occurred_at is not None and row.occurred_at.tzinfo is not None
        assert [change.status for change in history(engine, sent.id)] == ["delivered"]

    def test_contract_linked_by_our_notification_id(
        self, server: WebhookServer, engine: Engine
    ) -> None:
        # Given an event whose message id is unknown but which echoes our notification id
        sent, event = self._one(engine, "delivered", link_by_id=True)
        # When the provider posts it, then it is linked through the metadata
        assert self.send(server, [event]).json()["unmatched"] == 0
        assert stored_events(engine)[0].notification_id == sent.id

    def test_contract_hard_bounce_suppresses(self, server: WebhookServer, engine: Engine) -> None:
        sent, event = self._one(engine, "hard_bounce")
        assert self.send(server, [event]).status_code == 200
        [row] = stored_events(engine)
        assert (row.event_type, row.bounce_kind, row.notification_id) == (
            "bounced",
            "hard",
            sent.id,
        )
        [entry] = suppressions(engine)
        assert (entry.reason, entry.purpose, entry.created_by) == (
            "hard_bounce",
            "*",
            f"{self.provider}-webhook",
        )

    def test_contract_complaint_suppresses(self, server: WebhookServer, engine: Engine) -> None:
        _sent, event = self._one(engine, "complaint")
        assert self.send(server, [event]).status_code == 200
        assert stored_events(engine)[0].event_type == "complained"
        assert [entry.reason for entry in suppressions(engine)] == ["complaint"]

    def test_contract_unsubscribe_withdraws_consent(
        self, server: WebhookServer, engine: Engine
    ) -> None:
        sent, event = self._one(engine, "unsubscribe")
        assert self.send(server, [event]).status_code == 200
        assert stored_events(engine)[0].event_type == "unsubscribed"
        [record] = consent_records(engine)
        assert (record.contact_id, record.purpose, record.granted, record.source) == (
            sent.contact_id,
            "marketing",
            False,
            "esp_webhook",
        )
        assert record.notification_id == sent.id
        assert suppressions(engine) == []

    def test_contract_unknown_type_is_stored(self, server: WebhookServer, engine: Engine) -> None:
        _sent, event = self._one(engine, "unknown")
        answer = self.send(server, [event])
        assert answer.status_code == 200, answer.text
        assert answer.json()["stored"] == 1
        assert stored_events(engine)[0].event_type == "unknown"

    def test_contract_replay_is_a_duplicate(self, server: WebhookServer, engine: Engine) -> None:
        # Given a hard bounce the provider already delivered once
        sent, event = self._one(engine, "hard_bounce")
        body, headers = self.request([event])
        assert server.post(self.provider, body, headers).json()["stored"] == 1
        # When the same call comes again
        again = server.post(self.provider, body, headers)
        # Then it is recognised and has no second effect
        assert again.status_code == 200, again.text
        assert again.json() == {"received": 1, "stored": 0, "duplicates": 1, "unmatched": 0}
        assert len(stored_events(engine)) == 1
        assert len(suppressions(engine)) == 1
        assert len(history(engine, sent.id)) == 1

    def test_contract_no_credentials_401_nothing_stored(
        self, server: WebhookServer, engine: Engine
    ) -> None:
        _sent, event = self._one(engine, "hard_bounce")
        body, headers = self.unauthenticated([event])
        answer = server.post(self.provider, body, headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["code"] == "unauthorized"
        assert stored_events(engine) == [] and suppressions(engine) == []

    def test_contract_forged_403_nothing_stored(
        self, server: WebhookServer, engine: Engine
    ) -> None:
        _sent, event = self._one(engine, "hard_bounce")
        body, headers = self.forged([event])
        answer = server.post(self.provider, body, headers)
        assert answer.status_code == 403, answer.text
        assert answer.json()["code"] == "unauthorized"
        assert stored_events(engine) == [] and suppressions(engine) == []
