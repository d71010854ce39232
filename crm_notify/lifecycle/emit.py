"""Emitting a lifecycle event: a row in the lifecycle outbox, in the caller's transaction, so
the event exists exactly when the change it reports was committed."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from crm_notify.lifecycle.models import LifecycleEvent, LifecycleName, LifecycleSource


def emit(
    session: Session,
    name: LifecycleName,
    *,
    contact_id: int,
    source: LifecycleSource,
    **properties: Any,
) -> None:
    """Record lifecycle event ``name`` of ``contact_id`` (the relay ingests it later).

    Parameters:
        source: who caused it.
        properties: what the event says (JSON values), e.g. ``purpose="marketing"``.
    """
    session.add(
        LifecycleEvent(
            name=name.value,
            source=source.value,
            contact_id=contact_id,
            properties={**properties, "source": source.value},
        )
    )


def emit_for_notification(
    session: Session, notification_id: int, name: LifecycleName, **properties: Any
) -> None:
    """Lifecycle event ``name`` (``notification.*``, source ``system``) of a notification's
    contact, with its id, rule, template and channel; none when the notification answers a
    ``notification.*`` event itself, or a digest holds one (a rule reacting to sends must not
    feed itself)."""
    from crm_notify.outbox.models import Notification

    row = session.execute(
        sa.select(
            col(Notification.contact_id),
            col(Notification.rule),
            col(Notification.template),
            col(Notification.channel),
            col(Notification.context),
        ).where(col(Notification.id) == notification_id)
    ).first()
    if row is None or row.contact_id is None or answers_notification_event(row.context):
        return
    emit(
        session,
        name,
        contact_id=row.contact_id,
        source=LifecycleSource.SYSTEM,
        notification_id=notification_id,
        rule=row.rule,
        template=row.template,
        channel=row.channel,
        **properties,
    )


def answers_notification_event(context: dict[str, Any] | None) -> bool:
    """Whether a notification's template data shows it answers a ``notification.*`` event:
    its ``event``, or one of its digest's items."""
    context = context or {}
    events = [context.get("event")]
    digest = context.get("digest")
    if isinstance(digest, dict):
        events += [
            item.get("event") for item in digest.get("items") or [] if isinstance(item, dict)
        ]
    return any(
        isinstance(event, dict) and str(event.get("event") or "").startswith("notification.")
        for event in events
    )
