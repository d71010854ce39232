"""The lifecycle outbox: one row per lifecycle event, written with the change it reports."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class LifecycleName(enum.StrEnum):
    """The lifecycle events crm-notify emits (rules trigger on them with ``{event: NAME}``)."""

    SUBSCRIBED = "contact.subscribed"
    UNSUBSCRIBED = "contact.unsubscribed"
    PROFILE_UPDATED = "contact.profile_updated"
    EMAIL_CHANGED = "contact.email_changed"
    CLEANED = "contact.cleaned"
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_DELIVERED = "notification.delivered"
    NOTIFICATION_BOUNCED = "notification.bounced"


class LifecycleSource(enum.StrEnum):
    """Who caused a lifecycle event: the contact themself (an unsubscribe link, the preference
    page), an admin (CLI, console), the shop's systems through the API (events, identify
    traits, the consent API), or crm-notify itself (bounces, complaints, sends)."""

    CONTACT = "contact"
    ADMIN = "admin"
    API = "api"
    SYSTEM = "system"


def _new_message_id() -> str:
    return f"lc_{uuid.uuid4().hex}"


class LifecycleEvent(SQLModel, table=True):
    """One lifecycle event, until the relay has ingested it as a Segment ``track`` call (the
    event row, with ``message_id`` as its ``messageId``, holds it then, and this row is
    deleted). ``message_id`` is random, so it never repeats (row ids may, on SQLite, once the
    table is empty); ``attempts`` counts failed ingestions (the relay sets a row aside after
    :data:`~crm_notify.lifecycle.relay.MAX_ATTEMPTS`)."""

    __tablename__ = "lifecycle_event"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(
        default_factory=lambda: f"lc_{uuid.uuid4().hex}", max_length=64, unique=True
    )
    name: str = Field(max_length=64)
    source: str = Field(max_length=16)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    attempts: int = 0
