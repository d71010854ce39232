"""Contacts: the people notifications go to, built from ``identify`` calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class ContactBase(SQLModel):
    """Fields of a contact shared by every contact schema."""

    user_id: str | None = Field(default=None, max_length=255, unique=True, index=True)
    anonymous_id: str | None = Field(default=None, max_length=255, index=True)
    email: str | None = Field(default=None, max_length=320, unique=True, index=True)
    language: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    country: str | None = Field(default=None, max_length=64)


class Contact(ContactBase, table=True):
    """A contact row; ``traits`` keeps every trait the shop sent, as given."""

    id: int | None = Field(default=None, primary_key=True)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    updated_at: datetime = Field(default_factory=now, sa_column=utc_column())


class ContactPublic(ContactBase):
    """A contact as shown by the API and the CLI."""

    id: int
    traits: dict[str, Any]
    created_at: datetime
    updated_at: datetime
