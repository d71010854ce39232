"""Emitting a lifecycle event: a row in the lifecycle outbox, in the caller's transaction, so
the event exists exactly when the change it reports was committed."""

from __future__ import annotations

from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session, col

from crm_notify.db import insert_rows, new_row
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
    session.add(LifecycleEvent(**_event_values(name, source, contact_id, properties)))


def _event_values(
    name: LifecycleName, source: LifecycleSource, contact_id: int, properties: dict[str, Any]
) -> dict[str, Any]:
    """The column values of a lifecycle event row (its properties also name its source)."""
    return {
        "name": name.value,
        "source": source.value,
        "contact_id": contact_id,
        "properties": {**properties, "source": source.value},
    }


#: The columns of a notification that its ``notification.*`` lifecycle events report (see
#: :func:`emit_notification_event`); :class:`NotificationEventFacts` names the same ones.
NOTIFICATION_EVENT_COLUMNS = ("contact_id", "rule", "template", "channel", "context")


class NotificationEventFacts(Protocol):
    """A notification's :data:`NOTIFICATION_EVENT_COLUMNS` (a row of those columns)."""

    @property
    def contact_id(self) -> int | None: ...
    @property
    def rule(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def context(self) -> dict[str, Any] | None: ...


def emit_for_notification(
    session: Session, notification_id: int, name: LifecycleName, **properties: Any
) -> None:
    """:func:`emit_notification_event` for a notification read from the database."""
    from crm_notify.outbox.models import Notification

    row = session.execute(
        sa.select(*(getattr(Notification, column) for column in NOTIFICATION_EVENT_COLUMNS)).where(
            col(Notification.id) == notification_id
        )
    ).first()
    if row is not None:
        emit_notification_event(session, notification_id, row, name, **properties)


def emit_notification_event(
    session: Session,
    notification_id: int,
    facts: NotificationEventFacts,
    name: LifecycleName,
    **properties: Any,
) -> None:
    """Lifecycle event ``name`` (``notification.*``, source ``system``) of a notification's
    contact, with its id, rule, template and channel; none when the notification answers a
    ``notification.*`` event itself, or a digest holds one (a rule reacting to sends must not
    feed itself).

    Parameters:
        facts: the notification's :data:`NOTIFICATION_EVENT_COLUMNS`, read in this transaction.
        properties: more of what the event says (e.g. ``esp``); not the reported facts.

    Raises:
        TypeError: ``properties`` would overwrite one of the reported facts.
    """
    reported = {
        "notification_id": notification_id,
        "rule": facts.rule,
        "template": facts.template,
        "channel": facts.channel,
    }
    if clash := reported.keys() & properties.keys():
        raise TypeError(f"properties {sorted(clash)} are the notification's own")
    if facts.contact_id is None or answers_notification_event(facts.context):
        return
    values = _event_values(
        name, LifecycleSource.SYSTEM, facts.contact_id, {**reported, **properties}
    )
    # One INSERT without ORM bookkeeping (what emit's session.add comes to at the flush).
    insert_rows(session, LifecycleEvent, [new_row(LifecycleEvent, values)])


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
