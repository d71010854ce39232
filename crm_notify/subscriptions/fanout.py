"""Queuing a lifecycle event for every subscription that wants it, in the caller's transaction
(the lifecycle relay's, which also stores the event and deletes its outbox row): the deliveries
exist exactly when the event does."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from crm_notify.actions.signing import new_message_id
from crm_notify.contacts.models import Contact
from crm_notify.lifecycle.models import LifecycleEvent
from crm_notify.subscriptions.models import SubscriptionDelivery, WebhookSubscription
from crm_notify.subscriptions.payload import encode, event_payload


def queue_deliveries(session: Session, rows: Sequence[tuple[LifecycleEvent, Contact]]) -> int:
    """Add a delivery of each event in ``rows`` to each enabled subscription whose events and
    sources match it; return how many. Disabled subscriptions get none."""
    subscriptions = list(
        session.exec(select(WebhookSubscription).where(col(WebhookSubscription.enabled)))
    )
    if not subscriptions:
        return 0
    added = 0
    for event, contact in rows:
        contact_data = {"id": contact.id, "user_id": contact.user_id, "email": contact.email}
        payload = event_payload(
            event.name,
            event_id=event.message_id,
            occurred_at=event.created_at,
            contact=contact_data,
            properties=event.properties,
        )
        for subscription in subscriptions:
            if not subscription.wants(event.name, event.source):
                continue
            assert subscription.id is not None
            session.add(
                SubscriptionDelivery(
                    subscription_id=subscription.id,
                    message_id=new_message_id(),
                    event_id=event.message_id,
                    event_name=event.name,
                    contact_id=contact.id,
                    body=encode(payload, subscription.content_type),
                )
            )
            added += 1
    return added
