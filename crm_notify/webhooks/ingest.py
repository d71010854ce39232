"""Storing tracking events and applying their effects, in the caller's transaction.

Each event is stored once (a replay is recognised by its ``event_key`` and has no effect),
linked to our notification by the id we sent along or by the provider's message id, and
added to the notification's status history. Effects:

- a hard bounce or a complaint suppresses the address for every purpose;
- an unsubscribe records a consent withdrawal for the notification's purpose (every
  non-transactional purpose when it was transactional mail);
- every other type is only recorded (and counted in the KPIs). Unknown types are stored too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import find_contact_by_ref
from crm_notify.errors import EventValidationError
from crm_notify.guards.consent import record_consent
from crm_notify.guards.models import ConsentSource, SuppressionReason
from crm_notify.guards.suppression import address_hash_or_none, suppress
from crm_notify.outbox.models import Notification, NotificationStatusChange
from crm_notify.webhooks.events import BounceKind, EventType, TrackingEvent
from crm_notify.webhooks.models import TrackingEventRecord

logger = logging.getLogger(__name__)

#: The purpose whose mail needs no consent (its unsubscribes withdraw the others).
TRANSACTIONAL = "transactional"
#: Longest ``description`` kept.
DESCRIPTION_CHARS = 1000


@dataclass
class IngestSummary:
    """What one webhook call did: events received, stored, recognised as replays, and stored
    without a matching notification."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    unmatched: int = 0

    def as_json(self) -> dict[str, int]:
        """The summary as the webhook answers it."""
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
        }


def record_tracking_events(
    *,
    session: Session,
    provider: str,
    events: Sequence[TrackingEvent],
    purposes: Sequence[str] = ("marketing",),
) -> IngestSummary:
    """Store ``events`` of ``provider`` and apply their effects (see the module docstring).

    Parameters:
        purposes: the configured purposes (an unsubscribe from transactional mail withdraws
            every one of them but transactional).
    """
    summary = IngestSummary(received=len(events))
    for event in events:
        key = f"{provider}:{event.event_id}"[:255]
        if session.exec(
            select(TrackingEventRecord.id).where(TrackingEventRecord.event_key == key)
        ).first():
            summary.duplicates += 1
            continue
        notification = _notification_for(session, provider, event)
        record = TrackingEventRecord(
            event_key=key,
            esp=provider,
            event_type=event.event_type.value,
            provider_event_type=event.provider_event_type[:64],
            provider_message_id=event.provider_message_id,
            notification_id=notification.id if notification else None,
            recipient_hash=address_hash_or_none(
                event.recipient or (notification.to_address if notification else None)
            ),
            bounce_kind=event.bounce_kind.value if event.bounce_kind else None,
            url=event.url,
            description=(event.description or "")[:DESCRIPTION_CHARS] or None,
            occurred_at=event.occurred_at,
            payload=event.payload,
        )
        try:
            with session.begin_nested():  # a concurrent replay of the same event loses here
                session.add(record)
        except IntegrityError:
            summary.duplicates += 1
            continue
        summary.stored += 1
        if notification is None:
            summary.unmatched += 1
        else:
            _add_history(session, notification, event)
        _apply_effects(session, provider, event, notification, purposes)
    return summary


def _notification_for(session: Session, provider: str, event: TrackingEvent) -> Notification | None:
    """Our notification the event is about: by the id we sent along (when the recipient
    agrees), else by the provider's message id."""
    if event.notification_id is not None:
        row = session.get(Notification, event.notification_id)
        if row is not None and _same_recipient(row, event):
            return row
    if event.provider_message_id:
        rows = session.exec(
            select(Notification)
            .where(Notification.esp_message_id == event.provider_message_id)
            .order_by(Notification.id)  # type: ignore[arg-type]
        ).all()
        matching = [row for row in rows if _same_recipient(row, event)]
        if matching:
            return matching[0]
    return None


def _same_recipient(row: Notification, event: TrackingEvent) -> bool:
    if not event.recipient:
        return True
    return address_hash_or_none(event.recipient) == address_hash_or_none(row.to_address)


def _add_history(session: Session, notification: Notification, event: TrackingEvent) -> None:
    detail = event.event_type.value
    if event.bounce_kind:
        detail = f"{event.bounce_kind.value} bounce"
    if event.url:
        detail = f"clicked {event.url}"
    if event.description:
        detail = f"{detail}: {event.description}"
    assert notification.id is not None
    session.add(
        NotificationStatusChange(
            notification_id=notification.id,
            status=event.event_type.value,
            detail=detail[:DESCRIPTION_CHARS],
            at=event.occurred_at or now(),
        )
    )


def _apply_effects(
    session: Session,
    provider: str,
    event: TrackingEvent,
    notification: Notification | None,
    purposes: Sequence[str],
) -> None:
    address = event.recipient or (notification.to_address if notification else None)
    hard_bounce = event.event_type == EventType.BOUNCED and event.bounce_kind == BounceKind.HARD
    if address and (hard_bounce or event.event_type == EventType.COMPLAINED):
        reason = SuppressionReason.HARD_BOUNCE if hard_bounce else SuppressionReason.COMPLAINT
        try:
            suppress(
                session=session,
                email=address,
                reason=reason,
                created_by=f"{provider}-webhook",
                detail=(event.description or event.provider_event_type)[:DESCRIPTION_CHARS],
            )
        except EventValidationError:  # not an address: nothing to suppress
            return
        logger.info(
            "%s webhook: recipient suppressed (%s, notification %s)",
            provider,
            reason.value,
            notification.id if notification else None,
        )
    elif event.event_type == EventType.UNSUBSCRIBED:
        _withdraw(session, provider, event, notification, address, purposes)


def _withdraw(
    session: Session,
    provider: str,
    event: TrackingEvent,
    notification: Notification | None,
    address: str | None,
    purposes: Sequence[str],
) -> None:
    contact: Contact | None = None
    if notification is not None and notification.contact_id is not None:
        contact = session.get(Contact, notification.contact_id)
    elif address:
        try:
            contact = find_contact_by_ref(session, address)
        except ValueError:
            contact = None
    if contact is None or contact.id is None:
        return
    purpose = notification.purpose if notification is not None else TRANSACTIONAL
    withdrawn = (
        [purpose] if purpose != TRANSACTIONAL else [p for p in purposes if p != TRANSACTIONAL]
    )
    for name in withdrawn:
        record_consent(
            session=session,
            contact_id=contact.id,
            purpose=name,
            granted=False,
            source=ConsentSource.ESP_WEBHOOK,
            actor=f"{provider}-webhook",
            notification_id=notification.id if notification else None,
        )
    logger.info("%s webhook: consent withdrawn for %s", provider, ", ".join(withdrawn))
