"""GDPR Art. 17: erase one person from every table, keeping only a hashed suppression entry.

In one transaction, in foreign-key order:

1. the contact's decisions are deleted; other decisions, timers, notifications and consent
   records lose their link to the events about to go;
2. the contact's consent records are deleted;
3. notifications for the contact or to their address are kept for counts but anonymised:
   address ``erased@invalid``, no context, subject, message, error, keys or contact; their
   status history keeps the statuses, not the details; those not yet sent are ``cancelled``;
4. the contact's timers, orders and carts are deleted (with unlinked ones their events name,
   such as a guest checkout before sign-up, and any that mention the address);
5. their events are deleted (theirs, unlinked ones with their ``userId``/``anonymousId``, and
   any that mention their address);
6. other contacts' traits lose values that mention the address; the contact row is deleted;
7. the address is suppressed for every purpose (reason ``erased``) by its hash only, and every
   suppression entry for it loses the address in clear and its free-text detail, so a later
   import of the same address is never mailed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote_plus

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.commerce.models import Cart, Order
from crm_notify.contacts.models import Contact
from crm_notify.events.models import Event
from crm_notify.gdpr import _scope
from crm_notify.guards.models import ALL_PURPOSES, ConsentRecord, Suppression, SuppressionReason
from crm_notify.guards.suppression import address_hash, suppress
from crm_notify.lifecycle.models import LifecycleEvent
from crm_notify.outbox.models import (
    CLAIMABLE,
    Decision,
    Notification,
    NotificationStatus,
    NotificationStatusChange,
)
from crm_notify.subscriptions.models import SubscriptionDelivery
from crm_notify.timers.models import Timer
from crm_notify.webhooks.models import TrackingEventRecord

logger = logging.getLogger(__name__)

#: The address anonymised notifications keep (``.invalid`` never resolves: RFC 2606).
ERASED_ADDRESS = "erased@invalid"


@dataclass
class ErasureReport:
    """What :func:`erase_contact` removed or anonymised, by kind (counts only)."""

    contact_id: int
    events_deleted: int = 0
    decisions_deleted: int = 0
    notifications_anonymised: int = 0
    status_changes_cleared: int = 0
    orders_deleted: int = 0
    carts_deleted: int = 0
    timers_deleted: int = 0
    consent_records_deleted: int = 0
    tracking_events_deleted: int = 0
    other_contacts_scrubbed: int = 0
    suppression_id: int | None = None


def _count(result: sa.Result[tuple[()]] | sa.CursorResult[tuple[()]]) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def erase_contact(*, session: Session, contact: Contact, actor: str) -> ErasureReport:
    """Erase ``contact`` (see the module docstring); the caller commits.

    Parameters:
        actor: who asked (recorded as the suppression entry's ``created_by``).

    Returns:
        The counts of what was removed or anonymised.
    """
    assert contact.id is not None
    # Lock the contact first (PostgreSQL): a transaction storing an event for them right now
    # (the intake, the lifecycle relay) either commits before and its rows are found below, or
    # waits and then finds the contact gone; none can add a row between the reads and deletes.
    session.refresh(contact, with_for_update=True)  # and read it again under the lock
    report = ErasureReport(contact_id=contact.id)
    address = contact.email
    event_ids = _scope.ids(session.exec(_scope.event_ids(contact)))
    notification_ids = _scope.ids(session.exec(_scope.notification_ids(contact)))
    timer_ids = _scope.ids(
        session.exec(select(col(Timer.id)).where(Timer.contact_id == contact.id))
    )
    order_keys, cart_keys = _scope.commerce_keys(session, event_ids)
    run = session.execute

    # 1. decisions
    report.decisions_deleted = _count(
        run(
            sa.delete(Decision).where(
                sa.or_(
                    col(Decision.contact_id) == contact.id,
                    col(Decision.notification_id).in_(notification_ids),
                )
            )
        )
    )
    for model, column in (
        (Decision, col(Decision.event_id)),
        (Timer, col(Timer.event_id)),
        (Notification, col(Notification.event_id)),
        (ConsentRecord, col(ConsentRecord.event_id)),
    ):
        run(sa.update(model).where(column.in_(event_ids)).values(event_id=None))
    # 2. consent
    report.consent_records_deleted = _count(
        run(sa.delete(ConsentRecord).where(col(ConsentRecord.contact_id) == contact.id))
    )
    run(
        sa.update(ConsentRecord)
        .where(col(ConsentRecord.notification_id).in_(notification_ids))
        .values(notification_id=None)
    )
    # 3. notifications
    report.notifications_anonymised = _count(
        run(
            sa.update(Notification)
            .where(col(Notification.id).in_(notification_ids))
            .values(
                # Mail still queued for the person is never sent.
                status=sa.case(
                    (
                        col(Notification.status).in_([s.value for s in CLAIMABLE]),
                        NotificationStatus.CANCELLED.value,
                    ),
                    else_=col(Notification.status),
                ),
                to_address=ERASED_ADDRESS,
                contact_id=None,
                event_id=None,
                timer_id=None,
                context={},
                subject=None,
                message=None,
                last_error=None,
                dedupe_key=None,
                unique_key=None,
            )
        )
    )
    report.status_changes_cleared = _count(
        run(
            sa.update(NotificationStatusChange)
            .where(col(NotificationStatusChange.notification_id).in_(notification_ids))
            .values(detail=None)
        )
    )
    # 3b. the providers' tracking events (their payloads hold the address)
    tracked: list[sa.ColumnElement[bool]] = [
        col(TrackingEventRecord.notification_id).in_(notification_ids)
    ]
    if address:
        tracked.append(
            col(TrackingEventRecord.recipient_hash) == address_hash(address, strict=False)
        )
    report.tracking_events_deleted = _count(
        run(sa.delete(TrackingEventRecord).where(sa.or_(*tracked)))
    )
    # 4. timers, orders, carts
    run(
        sa.update(Notification)
        .where(col(Notification.timer_id).in_(timer_ids))
        .values(timer_id=None)
    )
    report.timers_deleted = _count(run(sa.delete(Timer).where(col(Timer.id).in_(timer_ids))))
    report.orders_deleted = _count(
        run(sa.delete(Order).where(_scope.orders_of(contact, order_keys)))
    )
    report.carts_deleted = _count(run(sa.delete(Cart).where(_scope.carts_of(contact, cart_keys))))
    # 5. events (and the lifecycle events about the contact)
    report.events_deleted = _count(run(sa.delete(Event).where(col(Event.id).in_(event_ids))))
    run(  # theirs, and other contacts' not ingested yet that mention the address
        sa.delete(LifecycleEvent).where(
            sa.or_(
                col(LifecycleEvent.contact_id) == contact.id,
                _scope.mentions(LifecycleEvent.properties, address),
            )
        )
    )
    # webhook subscriptions' deliveries about them, or naming the address (JSON or form body)
    mentions_address = (
        [
            col(SubscriptionDelivery.body).contains(text, autoescape=True)
            for text in (address, quote_plus(address))
        ]
        if address
        else []
    )
    run(
        sa.delete(SubscriptionDelivery).where(
            sa.or_(col(SubscriptionDelivery.contact_id) == contact.id, *mentions_address)
        )
    )
    # 6. contacts
    if address:
        for other in session.exec(_scope.other_contacts_mentioning(contact)).all():
            other.traits = _scope.scrub(dict(other.traits or {}), address)
            session.add(other)
            report.other_contacts_scrubbed += 1
        session.flush()
    session.expunge(contact)
    run(sa.delete(Contact).where(col(Contact.id) == contact.id))
    # 7. suppression
    if address:
        entry = suppress(
            session=session,
            email=address,
            reason=SuppressionReason.ERASED,
            purpose=ALL_PURPOSES,
            created_by=actor,
            keep_address=False,
        )
        run(
            sa.update(Suppression)
            .where(col(Suppression.address_hash) == address_hash(address))
            .values(email=None, detail=None)
        )
        report.suppression_id = entry.id
    logger.info("erased contact %s (%d events)", contact.id, report.events_deleted)
    return report
