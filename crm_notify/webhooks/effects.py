"""What a stored tracking event changes: the notification's status history, the suppression
list (hard bounces and complaints) and the consent ledger (unsubscribes from our mail).

Called by :func:`crm_notify.webhooks.ingest.record_tracking_events` for each newly stored event,
in its transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlmodel import Session

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.errors import EventValidationError
from crm_notify.guards.consent import record_consent
from crm_notify.guards.models import ALL_PURPOSES, ConsentSource, SuppressionReason
from crm_notify.guards.suppression import suppress, suppressed_for
from crm_notify.lifecycle.emit import emit_for_notification
from crm_notify.lifecycle.models import LifecycleName
from crm_notify.outbox.models import Notification, NotificationStatusChange
from crm_notify.webhooks.events import BounceKind, EventType, TrackingEvent

logger = logging.getLogger(__name__)

#: The purpose whose mail needs no consent (its unsubscribes withdraw the others).
TRANSACTIONAL = "transactional"
#: Longest history detail or suppression detail kept.
DETAIL_CHARS = 1000


def _clean(text: str) -> str:
    return text.replace("\x00", "")


def is_erased(session: Session, address: str | None) -> bool:
    """Whether ``address`` belongs to an erased person (suppressed as ``erased``)."""
    if not address:
        return False
    entry = suppressed_for(session=session, email=address, purpose=ALL_PURPOSES)
    return entry is not None and entry.reason == SuppressionReason.ERASED


def add_history(
    session: Session, notification: Notification, event: TrackingEvent, *, erased: bool
) -> None:
    detail = event.event_type.value
    if event.bounce_kind:
        detail = f"{event.bounce_kind.value} bounce"
    if event.url and not erased:
        detail = f"clicked {event.url}"
    if event.description and not erased:
        detail = f"{detail}: {event.description}"
    assert notification.id is not None
    session.add(
        NotificationStatusChange(
            notification_id=notification.id,
            status=event.event_type.value,
            detail=_clean(detail)[:DETAIL_CHARS],
            at=event.occurred_at or now(),
        )
    )


def apply_effects(
    session: Session,
    provider: str,
    event: TrackingEvent,
    notification: Notification | None,
    address: str | None,
    purposes: Sequence[str],
) -> None:
    if notification is not None and notification.id is not None:
        if event.event_type == EventType.DELIVERED:
            emit_for_notification(
                session, notification.id, LifecycleName.NOTIFICATION_DELIVERED, esp=provider
            )
        elif event.event_type == EventType.BOUNCED:
            kind = event.bounce_kind.value if event.bounce_kind else None
            emit_for_notification(
                session,
                notification.id,
                LifecycleName.NOTIFICATION_BOUNCED,
                esp=provider,
                bounce=kind,
            )
    hard_bounce = event.event_type == EventType.BOUNCED and event.bounce_kind == BounceKind.HARD
    if address and (hard_bounce or event.event_type == EventType.COMPLAINED):
        existing = suppressed_for(session=session, email=address, purpose=ALL_PURPOSES)
        if existing is not None and existing.purpose == ALL_PURPOSES:
            return  # already kept from every purpose; its entry (and reason) stays as it is
        reason = SuppressionReason.HARD_BOUNCE if hard_bounce else SuppressionReason.COMPLAINT
        try:
            suppress(
                session=session,
                email=address,
                reason=reason,
                created_by=f"{provider}-webhook",
                detail=_clean(event.description or event.provider_event_type)[:DETAIL_CHARS],
            )
        except EventValidationError:  # not an address: nothing to suppress
            return
        logger.info(
            "%s webhook: recipient suppressed (%s, notification %s)",
            provider,
            reason.value,
            notification.id if notification else None,
        )
    elif event.event_type == EventType.UNSUBSCRIBED and notification is not None:
        _withdraw(session, provider, notification, purposes)


def _withdraw(
    session: Session, provider: str, notification: Notification, purposes: Sequence[str]
) -> None:
    if notification.contact_id is None:
        return
    contact = session.get(Contact, notification.contact_id)
    if contact is None or contact.id is None:
        return
    purpose = notification.purpose
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
            notification_id=notification.id,
        )
    logger.info(
        "%s webhook: consent withdrawn for %s (notification %s)",
        provider,
        ", ".join(withdrawn),
        notification.id,
    )
