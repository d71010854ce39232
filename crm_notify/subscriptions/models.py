"""Webhook subscriptions and their outbox of deliveries.

A :class:`WebhookSubscription` is a URL told about lifecycle events (which ones, caused by which
sources), with its Standard Webhooks signing secret, body encoding, headers, its state
(enabled, or disabled with a reason) and its counters. A :class:`SubscriptionDelivery` is one
event on its way to one subscription: written in the transaction that ingests the lifecycle
event, sent by the dispatcher, retried with backoff, deleted once the receiver took it.
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm_notify.clock import now
from crm_notify.db import json_column, utc_column

#: Longest subscription URL.
MAX_URL_CHARS = 2048


class SubscriptionOrigin(enum.StrEnum):
    """Where a subscription is managed: the subscriptions file, or the API and CLI."""

    FILE = "file"
    API = "api"


class DeliveryStatus(enum.StrEnum):
    """Where one delivery stands. Sent ones are deleted (the subscription counts them)."""

    PENDING = "pending"  # waiting for its (next) attempt
    SENDING = "sending"  # claimed by a dispatcher until ``next_attempt_at`` (the lease)
    FAILED = "failed"  # every retry failed; kept for inspection and ``redeliver``


class WebhookSubscription(SQLModel, table=True):
    """One subscriber (see the module docstring).

    ``events`` and ``sources`` empty mean every event and every source. ``secret`` is the
    signing secret (``whsec_...``) of a subscription made through the API or CLI;
    ``secret_variable`` names the environment variable holding it for one from the file.
    ``headers`` values may hold ``${NAME}`` references (file subscriptions).
    ``failing_since`` is set at the first failure after a success; when every attempt has
    failed for ``disable_after_s`` seconds the subscription is disabled with a reason.
    """

    __tablename__ = "webhook_subscription"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    url: str = Field(max_length=MAX_URL_CHARS)
    events: list[str] = Field(default_factory=list, sa_column=json_column())
    sources: list[str] = Field(default_factory=list, sa_column=json_column())
    content_type: str = Field(default="json", max_length=8)
    headers: dict[str, str] = Field(default_factory=dict, sa_column=json_column())
    secret: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    secret_variable: str | None = Field(default=None, max_length=128)
    origin: str = Field(default=SubscriptionOrigin.API.value, max_length=8)
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=1000)
    disabled_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    disable_after_s: int
    failing_since: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    sent_count: int = 0
    failed_count: int = 0
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=1000)
    last_attempt_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    last_success_at: datetime | None = Field(default=None, sa_column=utc_column(nullable=True))
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())

    def wants(self, event: str, source: str) -> bool:
        """Whether an event ``event`` caused by ``source`` goes to this subscription."""
        return (not self.events or event in self.events) and (
            not self.sources or source in self.sources
        )


class SubscriptionDelivery(SQLModel, table=True):
    """One event on its way to one subscription (see the module docstring).

    ``message_id`` is the ``webhook-id`` of every attempt (receivers deduplicate on it);
    ``event_id`` the lifecycle event's ``messageId`` (one delivery per subscription and event);
    ``body`` the exact bytes sent, built once; ``contact_id`` lets an erasure remove it.
    """

    __tablename__ = "subscription_delivery"
    __table_args__ = (sa.UniqueConstraint("subscription_id", "event_id"),)

    id: int | None = Field(default=None, primary_key=True)
    subscription_id: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("webhook_subscription.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    message_id: str = Field(max_length=64, unique=True)
    event_id: str = Field(max_length=64)
    event_name: str = Field(max_length=64)
    contact_id: int | None = Field(default=None, index=True)
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=now, sa_column=utc_column(index=True))
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())
