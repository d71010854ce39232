"""The table of tracking events received from providers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class TrackingEventRecord(SQLModel, table=True):
    """One stored tracking event.

    ``event_key`` (webhook name and the provider's event id) is unique: a replayed event is
    recognised and has no effect. ``recipient_hash`` is the SHA-256 of the normalised address
    (as on the suppression list), so an erasure can find rows not linked to a notification.
    """

    __tablename__ = "tracking_event"

    id: int | None = Field(default=None, primary_key=True)
    event_key: str = Field(max_length=255, unique=True)
    esp: str = Field(max_length=64)
    event_type: str = Field(max_length=16, index=True)
    provider_event_type: str = Field(max_length=64)
    provider_message_id: str | None = Field(default=None, max_length=255, index=True)
    notification_id: int | None = Field(default=None, foreign_key="notification.id", index=True)
    recipient_hash: str | None = Field(default=None, max_length=64, index=True)
    bounce_kind: str | None = Field(default=None, max_length=8)
    url: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    occurred_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    received_at: datetime = Field(default_factory=now, sa_column=utc_column(index=True))
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
