"""Stored events: every accepted Segment call, kept once per ``messageId``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class Event(SQLModel, table=True):
    """One accepted call (track, identify, page, screen, group or alias)."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=255, unique=True, index=True)
    type: str = Field(max_length=16)
    name: str | None = Field(default=None, max_length=255, index=True)
    user_id: str | None = Field(default=None, max_length=255)
    anonymous_id: str | None = Field(default=None, max_length=255)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    source: str = Field(default="api", max_length=255)
    timestamp: datetime = Field(default_factory=now, sa_column=utc_column())
    received_at: datetime = Field(default_factory=now, sa_column=utc_column())
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
