"""GDPR Art. 15: everything held on one person, as JSON-able data."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, or_, select

from crm_notify.clock import now
from crm_notify.commerce.models import Cart, Order
from crm_notify.contacts.models import Contact
from crm_notify.events.models import Event
from crm_notify.gdpr import _scope
from crm_notify.guards.models import ConsentRecord, Suppression
from crm_notify.guards.suppression import address_hash_or_none
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange
from crm_notify.subscriptions.models import SubscriptionDelivery
from crm_notify.timers.models import Timer
from crm_notify.webhooks.models import TrackingEventRecord

#: Version of the export's layout, for whoever reads it later.
EXPORT_FORMAT = 1


def export_contact(*, session: Session, contact: Contact) -> dict[str, Any]:
    """Everything held on ``contact``: the contact row, events (with payloads), orders,
    carts, notifications (rendered subject and message, template context, status history),
    decisions, consent records, suppression entries for their address, timers, webhook
    subscriptions' deliveries about them not sent yet, and the providers' tracking events about
    their mail.

    Returns:
        A dict of plain JSON data (``json.dumps`` takes it as is).
    """
    assert contact.id is not None
    events = session.exec(
        select(Event).where(col(Event.id).in_(_scope.event_ids(contact))).order_by(col(Event.id))
    ).all()
    notifications = session.exec(
        select(Notification)
        .where(col(Notification.id).in_(_scope.notification_ids(contact)))
        .order_by(col(Notification.id))
    ).all()
    history: dict[int, list[dict[str, Any]]] = {}
    changes = session.exec(
        select(NotificationStatusChange)
        .where(col(NotificationStatusChange.notification_id).in_(_scope.notification_ids(contact)))
        .order_by(col(NotificationStatusChange.id))
    )
    for change in changes:
        history.setdefault(change.notification_id, []).append(_scope.row_data(change))
    digest = address_hash_or_none(contact.email)
    order_keys, cart_keys = _scope.commerce_keys(session, [e.id for e in events if e.id])
    return {
        "format": EXPORT_FORMAT,
        "exported_at": now().isoformat(),
        "contact": _scope.row_data(contact),
        "consent_records": _rows(session, ConsentRecord, ConsentRecord.contact_id == contact.id),
        "suppressions": _rows(session, Suppression, Suppression.address_hash == (digest or "")),
        "events": [_scope.row_data(row) for row in events],
        "orders": _rows(session, Order, _scope.orders_of(contact, order_keys)),
        "carts": _rows(session, Cart, _scope.carts_of(contact, cart_keys)),
        "notifications": [
            {**_scope.row_data(row), "status_history": history.get(row.id or 0, [])}
            for row in notifications
        ],
        "decisions": _rows(
            session,
            Decision,
            or_(
                Decision.contact_id == contact.id,
                col(Decision.notification_id).in_(_scope.notification_ids(contact)),
            ),
        ),
        "timers": _rows(session, Timer, Timer.contact_id == contact.id),
        "webhook_deliveries": _rows(
            session, SubscriptionDelivery, SubscriptionDelivery.contact_id == contact.id
        ),
        "tracking_events": _rows(
            session,
            TrackingEventRecord,
            or_(
                col(TrackingEventRecord.notification_id).in_(_scope.notification_ids(contact)),
                TrackingEventRecord.recipient_hash == (digest or ""),
            ),
        ),
    }


def _rows(session: Session, model: Any, condition: Any) -> list[dict[str, Any]]:
    query = select(model).where(condition).order_by(model.id)
    return [_scope.row_data(row) for row in session.exec(query)]
