"""The outbox: one row per decided send, its status history, and the decision log."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class NotificationStatus(enum.StrEnum):
    """Where a notification is in its life.

    ``pending`` (written with its decision) -> ``queued`` (handed to the broker) -> ``sending``
    (claimed by one worker) -> ``sent``; a transient failure goes to ``retrying`` and back to
    ``sending``; a permanent one, or too many attempts, ends in ``failed``. ``cancelled``: the
    guards said no when it was about to be delivered (consent withdrawn, address suppressed).
    ``gated``: held by a send gate until the integration releases it (-> ``pending``) or
    rejects it (-> ``cancelled``).
    """

    PENDING = "pending"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    GATED = "gated"


#: Statuses from which a worker may claim a notification for delivery.
CLAIMABLE = (NotificationStatus.PENDING, NotificationStatus.QUEUED, NotificationStatus.RETRYING)


class DecisionOutcome(enum.StrEnum):
    """What the engine decided for one rule and one event."""

    SEND = "send"
    SKIP = "skip"
    DEFER = "defer"


class Notification(SQLModel, table=True):
    """One decided send.

    ``idempotency_key`` (rule and event) is unique, so a duplicate event or a replayed decision
    cannot create a second row. ``dedupe_key`` (e.g. ``order:A1:shipped``) lets a rule skip a
    send that repeats one within its dedupe window. ``unique_key`` is a rule's own
    ``dedupe_key`` (e.g. the order id): one notification per rule, contact and key, enforced by
    a unique constraint. ``context`` is the plain data the template
    renders with, as it was when the decision was taken; ``message`` is the exact MIME message,
    kept once rendered so a retry sends the same bytes with the same Message-ID. ``esp`` is
    the ESP that has the message, or may have it (an attempt whose outcome is unknown pins the
    notification to that ESP: failover must not send it through another).
    ``response_status`` is the HTTP status a webhook action got back. ``first_attempt_at``
    starts the clock of the dead-letter age (reset by ``crm-notify outbox retry``).
    """

    __table_args__ = (
        sa.UniqueConstraint("rule", "contact_id", "unique_key", name="uq_notification_unique_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=512, unique=True)
    rule: str = Field(max_length=255, index=True)
    dedupe_key: str | None = Field(default=None, max_length=512, index=True)
    unique_key: str | None = Field(default=None, max_length=512)
    step: int = 0
    timer_id: int | None = Field(default=None, foreign_key="timer.id")
    template: str = Field(max_length=255)
    purpose: str = Field(max_length=64)
    channel: str = Field(default="email", max_length=32)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    event_id: int | None = Field(default=None, foreign_key="event.id", index=True)
    to_address: str = Field(max_length=320)
    language: str | None = Field(default=None, max_length=35)
    status: NotificationStatus = Field(
        default=NotificationStatus.PENDING,
        sa_column=sa.Column(sa.String(16), nullable=False, index=True),
    )
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    subject: str | None = Field(default=None, max_length=998)
    message_id: str | None = Field(default=None, max_length=255)
    message: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    esp: str | None = Field(default=None, max_length=64)
    esp_message_id: str | None = Field(default=None, max_length=255, index=True)
    response_status: int | None = None
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    updated_at: datetime = Field(default_factory=now, sa_column=utc_column(index=True))
    sent_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    first_attempt_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    gate_id: int | None = Field(default=None, foreign_key="gate.id", index=True)
    gate_data: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))


class NotificationStatusChange(SQLModel, table=True):
    """One entry of a notification's status history."""

    __tablename__ = "notification_status_change"

    id: int | None = Field(default=None, primary_key=True)
    notification_id: int = Field(foreign_key="notification.id", index=True)
    status: str = Field(max_length=16)
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    at: datetime = Field(default_factory=now, sa_column=utc_column())


class Decision(SQLModel, table=True):
    """Why a rule did or did not produce a send for an event (the decision log).

    ``details`` holds the inputs that decided it: the failing condition, the consent record,
    the limit and the count, the quiet-hours window.
    """

    id: int | None = Field(default=None, primary_key=True)
    event_id: int | None = Field(default=None, foreign_key="event.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    rule: str = Field(max_length=255, index=True)
    outcome: DecisionOutcome = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    reason: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    notification_id: int | None = Field(default=None, foreign_key="notification.id")
    details: dict[str, Any] | None = Field(default=None, sa_column=json_column(nullable=True))
    at: datetime = Field(default_factory=now, sa_column=utc_column(index=True))
