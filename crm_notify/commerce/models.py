"""Order and cart state, kept per id from the Segment ecommerce events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column


class Order(SQLModel, table=True):
    """The latest known state of one order (``order_id`` from the shop).

    ``updated_at`` is the timestamp of the newest event applied, so an event that arrives late
    with an older timestamp does not overwrite newer state.
    """

    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=255, unique=True, index=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    status: str | None = Field(default=None, max_length=255)
    previous_status: str | None = Field(default=None, max_length=255)
    total: float | None = None
    currency: str | None = Field(default=None, max_length=8)
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=json_column())
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
    updated_at: datetime = Field(default_factory=now, sa_column=utc_column())


class Cart(SQLModel, table=True):
    """The latest known state of one cart (``cart_id`` from the shop)."""

    id: int | None = Field(default=None, primary_key=True)
    cart_id: str = Field(max_length=255, unique=True, index=True)
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    status: str = Field(default="open", max_length=16)
    products: list[dict[str, Any]] = Field(default_factory=list, sa_column=json_column())
    total: float | None = None
    order_id: str | None = Field(default=None, max_length=255)
    last_activity_at: datetime = Field(default_factory=now, sa_column=utc_column())
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
